"""The servers, tools and agents of the generated traffic, and plausible arguments for them.

Tool names and argument shapes follow the MCP servers people run: the reference
filesystem, git and fetch servers, GitHub's server, Slack, an email sender, a SQL database,
a sandboxed Python runner, a calendar and a payments API. Arguments are drawn from small
per-(agent, tool) pools so that a 10-million-call store has a bounded set of distinct
argument texts (which is also what lets the policy be evaluated once per distinct call).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

COMPANY = "acme-corp.com"
ORG = "acme"
REPOS = ("billing-service", "web-frontend", "data-pipeline", "mobile-app", "docs-site")
PRIVATE_REPOS = ("internal-secrets", "infra-private")
CUSTOMER_DOMAINS = (
    "gmail.com", "outlook.com", "yahoo.com", "northwind.io", "contoso.com", "initech.com",
    "globex.net", "umbrella.co", "hooli.com", "piedpiper.com",
)  # fmt: skip
DOC_HOSTS = (
    "docs.python.org", "developer.mozilla.org", "stackoverflow.com", "en.wikipedia.org",
    "pypi.org", "github.com", "news.ycombinator.com", "arxiv.org", "docs.stripe.com",
    "learn.microsoft.com", "www.postgresql.org", "kubernetes.io",
)  # fmt: skip

SERVER_OF = {
    "read_file": "filesystem", "write_file": "filesystem", "list_directory": "filesystem",
    "delete_file": "filesystem", "git_log": "git", "get_file_contents": "github",
    "create_issue": "github", "create_gist": "github", "create_pull_request": "github",
    "slack_post_message": "slack", "send_email": "email", "fetch": "fetch",
    "http_post": "http", "query": "postgres", "run_python_code": "python-runner",
    "run_python_file": "python-runner", "pip_install_package": "python-runner",
    "list_events": "calendar", "create_event": "calendar", "create_charge": "payments",
    "refund": "payments",
}  # fmt: skip
TOOLS = tuple(SERVER_OF)

_WORDS = [
    "invoice",
    "retry",
    "handler",
    "cache",
    "config",
    "parser",
    "schema",
    "migration",
    "report",
    "billing",
    "user",
    "session",
    "queue",
    "worker",
    "metrics",
    "latency",
    "dashboard",
    "webhook",
    "export",
    "import",
    "search",
    "index",
    "token",
    "refund",
    "order",
    "customer",
    "ledger",
    "audit",
    "deploy",
    "release",
    "build",
    "test",
    "fixture",
    "backlog",
    "sprint",
    "roadmap",
]
_MODULES = ("api", "models", "views", "tasks", "utils_date", "db", "auth", "billing", "cli")


def _sentence(rng: random.Random, lo: int = 5, hi: int = 14) -> str:
    words = rng.choices(_WORDS, k=rng.randint(lo, hi))
    return " ".join(words).capitalize() + "."


def _text(rng: random.Random, sentences: int) -> str:
    return " ".join(_sentence(rng) for _ in range(sentences))


def _src_path(rng: random.Random) -> str:
    repo = rng.choice(REPOS)
    return f"/workspace/{repo}/src/{rng.choice(_MODULES)}/{rng.choice(_WORDS)}.py"


@dataclass(frozen=True)
class AgentContext:
    """What an agent's arguments depend on: its name and its usual destinations."""

    name: str
    emails: tuple[str, ...]
    channels: tuple[str, ...]
    webhooks: tuple[str, ...]
    repos: tuple[str, ...]


def _code(rng: random.Random) -> str:
    fn = rng.choice(_WORDS)
    return (
        f"import json\n\ndef {fn}(rows):\n    return [r for r in rows if r.get('{rng.choice(_WORDS)}')]\n"
        f"print(len({fn}(json.load(open('/workspace/data/{rng.choice(_WORDS)}.json')))))\n"
    )


def _args(tool: str, rng: random.Random, ctx: AgentContext) -> dict[str, Any]:
    """One plausible argument object for ``tool`` as ``ctx``'s agent would send it."""
    r = rng
    if tool == "read_file":
        p = r.random()
        if p < 0.02:
            return {"path": f"/workspace/{r.choice(REPOS)}/.env"}
        if p < 0.15:
            return {
                "path": f"/workspace/{r.choice(REPOS)}/{r.choice(['README.md', 'pyproject.toml', 'Makefile', 'config/settings.yaml'])}"
            }
        return {"path": _src_path(r)}
    if tool == "write_file":
        return {"path": _src_path(r), "content": _code(r)}
    if tool == "list_directory":
        return {
            "path": f"/workspace/{r.choice(REPOS)}/{r.choice(['src', 'tests', 'docs', 'scripts', 'src/' + r.choice(_MODULES)])}"
        }
    if tool == "delete_file":
        return {
            "path": f"/workspace/{r.choice(REPOS)}/build/{r.choice(_WORDS)}-{r.randint(1, 99)}.o"
        }
    if tool == "git_log":
        return {
            "repo_path": f"/workspace/{r.choice(ctx.repos)}",
            "max_count": r.choice([5, 10, 20]),
        }
    if tool == "get_file_contents":
        return {
            "owner": ORG,
            "repo": r.choice(ctx.repos),
            "path": r.choice(
                [
                    "README.md",
                    "CHANGELOG.md",
                    "docs/runbook.md",
                    "src/" + r.choice(_MODULES) + ".py",
                ]
            ),
            "ref": "main",
        }
    if tool == "create_issue":
        return {
            "owner": ORG,
            "repo": r.choice(ctx.repos),
            "title": _sentence(r, 3, 7),
            "body": _text(r, 3),
            "labels": [r.choice(["bug", "chore", "flaky-test"])],
        }
    if tool == "create_gist":
        return {
            "description": _sentence(r, 2, 5),
            "public": False,
            "files": {f"{r.choice(_WORDS)}.md": {"content": _text(r, 4)}},
        }
    if tool == "create_pull_request":
        branch = f"{r.choice(['fix', 'feat', 'chore'])}/{r.choice(_WORDS)}-{r.randint(1, 999)}"
        return {
            "owner": ORG,
            "repo": r.choice(ctx.repos),
            "title": _sentence(r, 3, 8),
            "head": branch,
            "base": "main",
            "body": _text(r, 3),
        }
    if tool == "slack_post_message":
        return {"channel_id": r.choice(ctx.channels), "text": _text(r, r.randint(1, 3))}
    if tool == "send_email":
        return {
            "to": [r.choice(ctx.emails)],
            "subject": _sentence(r, 3, 6),
            "body": _text(r, r.randint(2, 6)),
        }
    if tool == "fetch":
        host = r.choice(DOC_HOSTS)
        return {
            "url": f"https://{host}/{r.choice(_WORDS)}/{r.choice(_WORDS)}",
            "max_length": r.choice([5000, 10000, 20000]),
        }
    if tool == "http_post":
        return {
            "url": r.choice(ctx.webhooks),
            "json": {
                "event": r.choice(["deploy", "alert", "heartbeat", "metric"]),
                "value": round(r.random() * 100, 2),
                "service": r.choice(REPOS),
            },
        }
    if tool == "query":
        p = r.random()
        if p < 0.2:
            return {
                "sql": f"SELECT id, name, email FROM customers WHERE id = {r.randint(1, 90000)}"
            }
        table = r.choice(["orders", "events", "products", "shipments", "tickets"])
        return {
            "sql": f"SELECT * FROM {table} WHERE created_at > now() - interval '{r.randint(1, 30)} days' LIMIT {r.choice([10, 50, 100])}"
        }
    if tool == "run_python_code":
        return {"code": _code(r)}
    if tool == "run_python_file":
        return {"path": f"tests/test_{r.choice(_WORDS)}_{r.choice(_WORDS)}.py", "args": ["-q"]}
    if tool == "pip_install_package":
        return {
            "package": f"{r.choice(['requests', 'numpy', 'pandas', 'httpx', 'pydantic', 'rich', 'pytest'])}=={r.randint(1, 3)}.{r.randint(0, 30)}.{r.randint(0, 9)}"
        }
    if tool == "list_events":
        day = r.randint(1, 28)
        return {
            "calendar_id": "primary",
            "time_min": f"2026-01-{day:02d}T00:00:00Z",
            "time_max": f"2026-01-{day:02d}T23:59:59Z",
        }
    if tool == "create_event":
        day, hour = r.randint(1, 28), r.randint(8, 17)
        return {
            "summary": _sentence(r, 2, 5),
            "start": f"2026-02-{day:02d}T{hour:02d}:00:00Z",
            "end": f"2026-02-{day:02d}T{hour:02d}:30:00Z",
            "attendees": [r.choice(ctx.emails)],
        }
    if tool == "create_charge":
        return {
            "amount": r.randint(500, 90000),
            "currency": "usd",
            "customer": f"cus_{r.getrandbits(48):012x}",
            "description": f"Invoice {r.randint(10000, 99999)}",
            "idempotency_key": f"{r.getrandbits(64):016x}",
        }
    if tool == "refund":
        return {
            "charge": f"ch_{r.getrandbits(48):012x}",
            "amount": r.randint(500, 20000),
            "reason": r.choice(["duplicate", "requested_by_customer"]),
        }
    raise KeyError(tool)


def arguments_text(tool: str, rng: random.Random, ctx: AgentContext) -> str:
    return json.dumps(_args(tool, rng, ctx), separators=(", ", ": "))


# Pool sizes: a payment or a message is nearly unique; a directory listing is not.
POOL_SIZE = {
    "create_charge": 2000,
    "refund": 600,
    "send_email": 1200,
    "slack_post_message": 1200,
    "http_post": 1200,
    "create_issue": 1200,
    "create_pull_request": 1200,
    "create_event": 1200,
}
DEFAULT_POOL = 250


def _working_hours() -> tuple[float, ...]:
    return tuple(1.0 if 8 <= h < 18 else (0.35 if 6 <= h < 22 else 0.05) for h in range(24))


def _always_on() -> tuple[float, ...]:
    return tuple(1.0 for _ in range(24))


def _nightly() -> tuple[float, ...]:
    return tuple(1.0 if h in (1, 2, 3) else (0.5 if 9 <= h < 19 else 0.1) for h in range(24))


@dataclass(frozen=True)
class Archetype:
    """Habits of one kind of agent: which tools, how long its sessions, when it works."""

    name: str
    service: str
    tools: dict[str, float]
    session_calls: float  # median calls per session
    gap_seconds: float  # mean pause between calls
    sessions_per_day: float
    hours: tuple[float, ...]
    error_rate: float = 0.03
    records_results: bool = False  # its SDK records tool-result excerpts
    anonymous: bool = False  # its spans carry no agent or session id
    grant: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


ARCHETYPES: tuple[Archetype, ...] = (
    Archetype(
        "coder",
        "claude-code",
        {
            "read_file": 30,
            "list_directory": 10,
            "write_file": 14,
            "git_log": 8,
            "get_file_contents": 8,
            "run_python_code": 8,
            "run_python_file": 8,
            "pip_install_package": 2,
            "create_pull_request": 3,
            "create_issue": 3,
            "delete_file": 3,
            "fetch": 3,
        },
        28,
        9.0,
        10,
        _working_hours(),
        grant="team-eng",
    ),
    Archetype(
        "support",
        "langgraph-support",
        {
            "query": 35,
            "send_email": 20,
            "slack_post_message": 10,
            "list_events": 10,
            "create_event": 5,
            "read_file": 5,
            "get_file_contents": 5,
            "fetch": 10,
        },
        14,
        12.0,
        14,
        _working_hours(),
        grant="team-support",
    ),
    Archetype(
        "billing",
        "billing-assistant",
        {
            "query": 35,
            "create_charge": 20,
            "refund": 5,
            "send_email": 15,
            "slack_post_message": 10,
            "list_events": 5,
            "read_file": 10,
        },
        16,
        10.0,
        10,
        _working_hours(),
        grant="team-finance",
    ),
    Archetype(
        "research",
        "openai-agents-research",
        {
            "fetch": 45,
            "read_file": 10,
            "write_file": 15,
            "slack_post_message": 10,
            "run_python_code": 10,
            "query": 10,
        },
        22,
        14.0,
        8,
        _working_hours(),
        records_results=True,
        grant="team-research",
    ),
    Archetype(
        "ci",
        "ci-bot",
        {
            "run_python_file": 45,
            "read_file": 20,
            "list_directory": 10,
            "git_log": 5,
            "pip_install_package": 8,
            "write_file": 7,
            "create_issue": 2,
            "slack_post_message": 3,
        },
        140,
        0.8,
        12,
        _nightly(),
        error_rate=0.05,
        grant="ci",
    ),
    Archetype(
        "ops",
        "ops-agent",
        {
            "query": 15,
            "http_post": 20,
            "fetch": 15,
            "slack_post_message": 15,
            "read_file": 15,
            "list_directory": 5,
            "send_email": 5,
            "list_events": 10,
        },
        18,
        20.0,
        20,
        _always_on(),
        records_results=True,
        grant="team-ops",
    ),
    Archetype(
        "assistant",
        "desktop-assistant",
        {
            "read_file": 20,
            "list_directory": 10,
            "fetch": 20,
            "send_email": 15,
            "list_events": 15,
            "create_event": 10,
            "query": 10,
        },
        12,
        15.0,
        9,
        _working_hours(),
        records_results=True,
        anonymous=True,
    ),
)


def agent_context(name: str, index: int, rng: random.Random) -> AgentContext:
    """An agent's usual destinations: a few colleagues, channels, webhooks, repositories."""
    people = ("alice", "bob", "carol", "dan", "erin", "frank", "grace", "heidi", "ivan", "judy")
    emails = tuple(f"{p}@{COMPANY}" for p in rng.sample(people, 3))
    if name.startswith("support") or name.startswith("billing"):
        emails = emails + tuple(
            f"{rng.choice(people)}.{rng.randint(1, 99)}@{d}" for d in CUSTOMER_DOMAINS
        )
    channels = tuple(
        rng.sample(
            [
                "#eng",
                "#alerts",
                "#support",
                "#billing",
                "#research",
                "#ops",
                "#releases",
                "#random",
            ],
            3,
        )
    )
    webhooks = (
        f"https://hooks.internal.{COMPANY}/events",
        "https://events.pagerduty.com/v2/enqueue",
        f"https://status.{COMPANY}/api/incidents",
    )
    repos = tuple(rng.sample(REPOS, 3))
    return AgentContext(name, emails, channels, webhooks, repos)


def result_excerpt(rng: random.Random) -> str:
    """A benign excerpt of a fetched page, as an SDK that records tool results keeps it."""
    return f"<title>{_sentence(rng, 2, 5)}</title> {_text(rng, 2)}"


def pool_builder(tool: str) -> Callable[[random.Random, AgentContext], str]:
    return lambda rng, ctx: arguments_text(tool, rng, ctx)
