"""Secret redaction for tool-call arguments, applied before a span leaves the enforcer and
again by the collector for spans from other sources. It belongs to neither stage: both
import it from here, so the two always redact alike.

Known secret formats are replaced by a typed marker ``[REDACTED:<kind>]``; values under
key-like names (``password``, ``api_key``, ``authorization``...) are replaced when they
look like credentials. Redaction is idempotent: a marker is never rewritten into another.
The formats come from two places: the built-in kinds below, and the maintained ruleset,
gitleaks' rules shipped as data (:mod:`callward.secret_rules`), run after them.

Why not detect-secrets directly: its plugins scan one line at a time through a global
settings context, report findings instead of rewriting text, and cost tens of microseconds
per plugin per line. This runs on every call in the enforcer's span building, so every
trigger literal of every rule (about 250) is compiled into one trie-shaped alternation:
one scan rejects the text that holds none (most text), and a rule runs only when one of
its own triggers is present. docs/redaction.md lists the kinds and the ruleset.

Extra patterns: ``Redactor(extra_patterns={"kind": regex})``, or for the module-level
default, the environment variable ``CALLWARD_REDACT_PATTERNS`` holding either an inline
JSON object ``{"kind": "regex"}`` or the path of a JSON/YAML file with that mapping. A
pattern with a named group ``secret`` replaces only that group, keeping its context.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from callward.secret_rules import SecretRule, load_rules

MARKER_PREFIX = "[REDACTED:"
ENV_PATTERNS = "CALLWARD_REDACT_PATTERNS"
_MARKER_RE = re.compile(r"\[REDACTED:[a-z0-9_]+\]")
_KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")


@dataclass(frozen=True)
class SecretKind:
    """One built-in secret format. ``triggers`` are literals one of which every match
    contains (checked with ``in`` first: most text holds none, and a substring test is far
    cheaper than a regex scan). ``secret_group`` names the group to replace when the match
    carries context to keep (the user and host of a URL, a variable name)."""

    kind: str
    pattern: str
    triggers: tuple[str, ...]
    fold_case: bool = False  # compare triggers against the lower-cased text
    secret_group: str = ""


# Applied in this order; earlier kinds win (a token inside a URL's password is typed as the
# token, a Slack webhook is not mistaken for a URL with a password).
BUILTIN_KINDS: tuple[SecretKind, ...] = (
    SecretKind(
        "private_key",
        r"-----BEGIN[ A-Z0-9]{0,30}PRIVATE KEY(?: BLOCK)?-----"
        r"(?:.{0,20000}?-----END[ A-Z0-9]{0,30}PRIVATE KEY(?: BLOCK)?-----"
        r"|[A-Za-z0-9+/=\s\\:,-]*)",
        ("PRIVATE KEY",),
    ),
    SecretKind(
        "slack_webhook",
        r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/+-]{16,}",
        ("hooks.slack.com",),
    ),
    SecretKind(
        "aws_secret_key",
        r"(?i:aws)[\w.-]{0,30}?(?i:secret|private)[\w.-]{0,30}?[\"']?[ \t]{0,16}[:=][ \t]{0,16}"
        r"[\"']?(?P<secret>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])",
        ("aws",),
        fold_case=True,
        secret_group="secret",
    ),
    SecretKind(
        "aws_access_key",
        r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}(?![A-Za-z0-9])",
        ("AKIA", "ASIA", "ABIA", "ACCA", "A3T"),
    ),
    SecretKind(
        "github_token",
        r"(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,251})",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    SecretKind(
        "gitlab_token",
        r"gl(?:pat|dt|ft|soat|rt|cbt|ptt)-[A-Za-z0-9_-]{20,}",
        ("glpat-", "gldt-", "glft-", "glsoat-", "glrt-", "glcbt-", "glptt-"),
    ),
    SecretKind("slack_token", r"xox[abposr]-[A-Za-z0-9-]{10,}", ("xox",)),
    SecretKind("stripe_key", r"[rs]k_(?:live|test)_[A-Za-z0-9]{16,}", ("k_live_", "k_test_")),
    SecretKind("anthropic_key", r"sk-ant-[A-Za-z0-9_-]{20,}", ("sk-ant-",)),
    SecretKind("openai_key", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}", ("sk-",)),
    SecretKind(
        "jwt",
        r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
        ("eyJ",),
    ),
    SecretKind("google_api_key", r"AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])", ("AIza",)),
    SecretKind("huggingface_token", r"(?<![A-Za-z0-9_])hf_[A-Za-z]{34}(?![A-Za-z0-9_])", ("hf_",)),
    SecretKind("npm_token", r"(?<![A-Za-z0-9_])npm_[A-Za-z0-9]{36}(?![A-Za-z0-9])", ("npm_",)),
    SecretKind(
        "sendgrid_key", r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])", ("SG.",)
    ),
    SecretKind(
        "azure_client_secret",
        r"(?<![A-Za-z0-9_~.-])[A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.-]{31,34}(?![A-Za-z0-9_~.-])",
        ("Q~",),
    ),
    SecretKind(
        "azure_storage_key",
        r"(?i:AccountKey)=(?P<secret>[A-Za-z0-9+/]{86}==)",
        ("accountkey=",),
        fold_case=True,
        secret_group="secret",
    ),
    # Credentials on a command line: curl's -u/--user user:password, mysql's -pPASSWORD
    # (no space: with one, mysql prompts), sshpass -p PASSWORD, redis-cli -a PASSWORD and
    # --password VALUE of many tools; the value may be quoted.
    SecretKind(
        "cli_password",
        r"(?:(?<![\w-])(?:-u|--user)(?:[ \t]+|=)[\"']?[^\s:\"']{1,128}:"
        r"|(?<![\w-])(?:mysql|mysqldump|mysqladmin|mariadb)\b[^\n]{0,512}?[ \t]-p[\"']?"
        r"|(?<![\w-])sshpass\b[^\n]{0,256}?[ \t]-p[ \t]*[\"']?"
        r"|(?<![\w-])redis-cli\b[^\n]{0,512}?[ \t]-a[ \t]+[\"']?"
        r"|(?<![\w-])--pass(?:word)?[ \t]+[\"']?)"
        r"(?P<secret>(?!\[REDACTED:)[^\s\"'(),;|&<>]{1,256})",
        ("-u ", "-u\t", "-u=", "--user", "mysql", "mariadb", "sshpass", "redis-cli", "--pass"),
        fold_case=True,
        secret_group="secret",
    ),
    SecretKind(
        "url_password",
        r"\b[A-Za-z][A-Za-z0-9+.-]{0,30}://[^\s:/?#@\[\]\"']{1,256}:"
        r"(?P<secret>[^\s/?#\"']{1,256})@",
        ("://",),
        secret_group="secret",
    ),
)

# Names whose value is a secret whatever it looks like (passwords are often low-entropy).
_PASSWORD_NAME = r"pass(?:word|wd|phrase)?|pwd|pw"
# Names whose value is a secret when it looks random.
_SECRET_NAME = (
    r"secret|token|api[_-]?key|apikey|access[_-]?key|auth|authorization|credentials?"
    r"|private[_-]?key|client[_-]?secret|session[_-]?key|cookie|signature|bearer"
)
_NAME_TRIGGERS = (
    "pass", "pw", "secret", "token", "key", "auth", "credential", "cookie", "signature",
    "bearer",
)  # fmt: skip
# The maintained ruleset (gitleaks' rules as data, callward/secret_rules.py). They run
# after the built-in kinds, so a secret both know keeps its built-in kind.
RULESET, RULESET_SOURCE = load_rules()


# Letters by frequency in English text: a trie level tries its branches in this order, so
# the branch for a common letter is reached after few tests (prose scans about 1.3x faster).
_FREQUENT = " etaoinsrhldcumfpgwybvkxjqz"


def _frequency_rank(ch: str) -> tuple[int, str]:
    at = _FREQUENT.find(ch)
    return (at if at >= 0 else len(_FREQUENT), ch)


def _trie_pattern(words: Iterable[str], shortest: bool) -> str:
    """One regex matching any of ``words`` (literals), laid out as a trie so that a scan
    costs a few character tests per position whatever the number of words. ``shortest``:
    stop at the first word that ends (a screen); else the longest word at a position."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        ends = "" in node
        if ends and shortest:
            return ""
        children = sorted((ch for ch in node if ch), key=_frequency_rank)
        alternatives = [re.escape(ch) + emit(node[ch]) for ch in children]
        if not alternatives:
            return ""
        body = alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"
        return f"(?:{body})?" if ends else body

    return emit(trie)


# Any text whose lower-cased form contains none of these holds nothing to redact: one
# scan for all of them (a trie-shaped alternation, in C) rejects most input far faster
# than running any rule. Each rule runs only when one of its own triggers is present.
_ALL_TRIGGERS = tuple(
    sorted(
        {t.lower() for k in BUILTIN_KINDS for t in k.triggers}
        | set(_NAME_TRIGGERS)
        | {w for rule in RULESET for w in rule.keywords}
    )
)
_SCREEN_RE = re.compile(_trie_pattern(_ALL_TRIGGERS, shortest=True))
# The same plus "\u" (a JSON escape may spell any secret): the screen for JSON text.
_JSON_SCREEN_RE = re.compile(_trie_pattern((*_ALL_TRIGGERS, "\\u"), shortest=True))
# The longest trigger at each position; every trigger present is a prefix of one found.
_FIND_RE = re.compile("(?=(" + _trie_pattern(_ALL_TRIGGERS, shortest=False) + "))")
_PREFIX_TRIGGERS = {
    t: tuple(t[:i] for i in range(1, len(t) + 1) if t[:i] in set(_ALL_TRIGGERS))
    for t in _ALL_TRIGGERS
}
_NAME_TRIGGER_SET = frozenset(_NAME_TRIGGERS)

_SEPARATOR = "\x00"  # lowercasing never makes it, and no trigger contains it


def _has_trigger(lower: str) -> bool:
    return _SCREEN_RE.search(lower) is not None


def _present_triggers(lower: str) -> set[str]:
    found: set[str] = set()
    for longest in set(_FIND_RE.findall(lower)):
        found.update(_PREFIX_TRIGGERS[longest])
    return found


_PASSWORD_KEY_RE = re.compile(rf"(?:^|[\W_])(?:{_PASSWORD_NAME})(?:$|[\W_])", re.IGNORECASE)
_SECRET_KEY_RE = re.compile(rf"(?:{_SECRET_NAME}|{_PASSWORD_NAME})", re.IGNORECASE)
_AWS_SECRET_KEY_RE = re.compile(r"aws.*(?:secret|private)", re.IGNORECASE)
_AWS_SECRET_VALUE_RE = re.compile(r"[A-Za-z0-9/+]{40}")

# ``name = value`` / ``"name": "value"`` in free text; the name is checked in the callback,
# which keeps the scan linear (one attempt per word start).
_KEY_VALUE_RE = re.compile(
    r"(?<![\w.-])(?P<head>[\"']?(?P<name>[\w.-]{1,64})[\"']?[ \t]{0,16}[:=][ \t]{0,16}[\"']?)"
    r"(?P<value>(?:(?i:bearer|basic|token)[ \t]+)?(?!\[REDACTED:)[^\s\"',;&}\]]+)"
)
_SCHEME_PREFIX_RE = re.compile(r"^(?:bearer|basic|token)\s+", re.IGNORECASE)
_HIGH_ENTROPY = "high_entropy_secret"
_PASSWORD = "password"

MIN_SECRET_LENGTH = 12
MIN_ENTROPY_BITS = 3.0


def shannon_entropy(value: str) -> float:
    """Bits per character of ``value`` (0 for the empty string)."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def looks_random(value: str) -> bool:
    """True for a credential-like token: long enough, no spaces, mixed classes, high entropy.

    The thresholds follow the spirit of detect-secrets' entropy plugins, adapted to short
    values (a 16-character string cannot exceed 4 bits/char).
    """
    token = _SCHEME_PREFIX_RE.sub("", value.strip())
    if len(token) < MIN_SECRET_LENGTH or any(ch.isspace() for ch in token):
        return False
    classes = (
        any(ch.islower() for ch in token)
        + any(ch.isupper() for ch in token)
        + any(ch.isdigit() for ch in token)
        + any(not ch.isalnum() for ch in token)
    )
    if classes < 2:
        return False
    return shannon_entropy(token) >= MIN_ENTROPY_BITS


def marker(kind: str) -> str:
    return f"{MARKER_PREFIX}{kind}]"


def count_redactions(text: str) -> int:
    """How many ``[REDACTED:<kind>]`` markers ``text`` holds."""
    return len(_MARKER_RE.findall(text))


def _validate_extra(
    extra_patterns: Mapping[str, str | re.Pattern[str]],
) -> list[tuple[str, re.Pattern[str]]]:
    compiled: list[tuple[str, re.Pattern[str]]] = []
    for kind, pattern in extra_patterns.items():
        if not isinstance(kind, str) or not _KIND_RE.fullmatch(kind):
            raise ValueError(
                f"redaction kind {kind!r} must be lowercase letters, digits and '_' (max 40)"
            )
        try:
            regex = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern)
        except (re.error, TypeError) as e:
            raise ValueError(f"redaction pattern {kind!r} is not a valid regex: {e}") from e
        if regex.search(""):
            raise ValueError(f"redaction pattern {kind!r} matches the empty string")
        compiled.append((kind, regex))
    return compiled


class Redactor:
    """Replaces secrets in text and JSON with ``[REDACTED:<kind>]`` markers.

    ``extra_patterns`` maps a kind to a regex; a named group ``secret`` limits the
    replacement to that group. Extra patterns run after the built-in kinds.
    """

    def __init__(self, extra_patterns: Mapping[str, str | re.Pattern[str]] | None = None):
        self.extra = _validate_extra(extra_patterns or {})
        # (regex, re.sub callback) per rule, built-in kinds first, then the ruleset.
        self._rules: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
            (re.compile(k.pattern, re.DOTALL), _replacer(k.kind, k.secret_group))
            for k in BUILTIN_KINDS
        ] + [(rule.regex, _ruleset_replacer(rule)) for rule in RULESET]
        # trigger -> the rules it starts, in order
        by_trigger: dict[str, list[int]] = {}
        for i, k in enumerate(BUILTIN_KINDS):
            for t in {t.lower() for t in k.triggers}:
                by_trigger.setdefault(t, []).append(i)
        for i, rule in enumerate(RULESET, start=len(BUILTIN_KINDS)):
            for t in rule.keywords:
                by_trigger.setdefault(t, []).append(i)
        self._by_trigger = {t: tuple(ids) for t, ids in by_trigger.items()}

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Redactor:
        """The redactor configured by ``CALLWARD_REDACT_PATTERNS`` (inline JSON or a file)."""
        env = os.environ if environ is None else environ
        raw = env.get(ENV_PATTERNS, "").strip()
        if not raw:
            return cls()
        return cls(load_patterns(raw))

    # --- text -------------------------------------------------------------------------

    def _replace_key_value(self, m: re.Match[str]) -> str:
        name, value = m.group("name"), m.group("value")
        if _is_password_key(name):
            return m.group("head") + marker(_PASSWORD)
        if _SECRET_KEY_RE.search(name) and looks_random(value):
            return m.group("head") + marker(_HIGH_ENTROPY)
        return m.group(0)

    def is_clean_json_text(self, text: str) -> bool:
        """True when :meth:`redact_json_text` (and so :meth:`redact_text`) would return
        ``text`` unchanged because nothing in it can start a secret: no trigger substring,
        no JSON escape, no extra patterns configured."""
        return not self.extra and "\\u" not in text and _SCREEN_RE.search(text.lower()) is None

    def clean_texts(self, texts: Sequence[str]) -> list[bool]:
        """For each of ``texts``, :meth:`is_clean_json_text` (also ruling out ``\\U``),
        computed for the whole list in one lowercase pass and one substring search per
        trigger (C speed) instead of per text: the screen for many values seen once."""
        if self.extra:
            return [False] * len(texts)
        lower = _SEPARATOR.join(texts).lower()
        if lower.count(_SEPARATOR) != len(texts) - 1:  # a text holds the separator
            return [self.is_clean_json_text(t) and "\\u" not in t.lower() for t in texts]
        found = [m.start() for m in _JSON_SCREEN_RE.finditer(lower)]
        clean = [True] * len(texts)
        if found:
            starts = list(
                itertools.accumulate((len(t) + 1 for t in lower.split(_SEPARATOR)), initial=0)
            )
            for at in found:
                clean[bisect.bisect_right(starts, at) - 1] = False
        return clean

    def redact_text(self, text: str) -> str:
        """``text`` with every known secret format and credential-like value replaced."""
        lower = text.lower()
        if _SCREEN_RE.search(lower) is None:
            return self._redact_extra(text) if self.extra else text
        present = _present_triggers(lower)
        run: set[int] = set()
        for trigger in present:
            run.update(self._by_trigger.get(trigger, ()))
        out = text
        for i in sorted(run):
            regex, replace = self._rules[i]
            out = regex.sub(replace, out)
        if ("=" in out or ":" in out) and not present.isdisjoint(_NAME_TRIGGER_SET):
            out = _KEY_VALUE_RE.sub(self._replace_key_value, out)
        return self._redact_extra(out) if self.extra else out

    def _redact_extra(self, text: str) -> str:
        for kind_name, regex in self.extra:
            group = "secret" if "secret" in regex.groupindex else ""
            text = regex.sub(_replacer(kind_name, group), text)
        return text

    # --- JSON -------------------------------------------------------------------------

    def redact_value(self, key: str, value: Any) -> Any:
        """A JSON value found under ``key`` (``""`` at the top level), redacted recursively."""
        if isinstance(value, str):
            return self._redact_string_under(key, value)
        if isinstance(value, dict):
            named, value_field = _pair_name(value)
            return {
                self.redact_text(k) if isinstance(k, str) else k: self.redact_value(
                    named if named and str(k).lower() == value_field else str(k), v
                )
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.redact_value(key, v) for v in value]
        if key and value is not None and not isinstance(value, bool) and _is_password_key(key):
            return marker(_PASSWORD)  # a numeric PIN or password is still a password
        return value

    def _redact_string_under(self, key: str, value: str) -> str:
        redacted = self.redact_text(value)
        if not key or redacted != value or value.startswith(MARKER_PREFIX):
            return redacted
        if _is_password_key(key) and value:
            return marker(_PASSWORD)
        if _SECRET_KEY_RE.search(key):
            if _AWS_SECRET_KEY_RE.search(key) and _AWS_SECRET_VALUE_RE.fullmatch(value):
                return marker("aws_secret_key")
            if looks_random(value):
                return marker(_HIGH_ENTROPY)
        return redacted

    def redact_json_text(self, text: str) -> str:
        """Parse ``text`` as JSON, redact every string (and credential-like values under
        key-like names) and serialise it again; text that is not JSON is redacted as text.
        Unchanged input is returned as is, so its formatting survives."""
        if self.is_clean_json_text(text):
            return text  # nothing that could be a secret, even after JSON unescaping
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            return self.redact_text(text)
        try:
            redacted = self.redact_value("", obj)
        except RecursionError:
            return self.redact_text(text)
        if redacted == obj:
            return text
        return json.dumps(redacted, ensure_ascii=False)


def _pair_name(obj: Mapping[Any, Any]) -> tuple[str, str]:
    """The name of a ``{"name": "DB_PASSWORD", "value": ...}`` pair (Kubernetes env
    entries, AWS tags and parameters, CloudFormation's ``ParameterKey``/``ParameterValue``,
    HTTP header lists) and its value field, lower-cased, so the value is judged as if it
    stood under that name; ``("", "")`` for any other object."""
    if len(obj) > 8:
        return "", ""
    keys = {str(k).lower(): v for k, v in obj.items()}
    for field in keys:  # name/value, key/value, ParameterKey/ParameterValue, TagName/...
        for suffix in ("name", "key"):
            if field.endswith(suffix) and field[: -len(suffix)] + "value" in keys:
                name = keys[field]
                if isinstance(name, str):
                    return name, field[: -len(suffix)] + "value"
    return "", ""


_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


# Unambiguous inside a word too: PGPASSWORD, SSHPASS, userpassword, MYSQLPASSWD.
_PASSWORD_INFIX_RE = re.compile(r"passw(?:or)?d|passphrase|^sshpass$", re.IGNORECASE)


def _is_password_key(key: str) -> bool:
    """``password``, ``db_password``, ``DB-PASS``, ``dbPassword``, ``pw``, ``PGPASSWORD``:
    a password name as a word of the key, in any casing, camelCase humps counting as word
    breaks, or ``password``/``passwd``/``passphrase`` anywhere in it."""
    return bool(
        _PASSWORD_INFIX_RE.search(key) or _PASSWORD_KEY_RE.search(_CAMEL_HUMP.sub("_", key))
    )


@lru_cache(maxsize=256)
def _replacer(kind: str, secret_group: str) -> Any:
    """The ``re.sub`` callback for one kind: the whole match, or only its secret group, becomes
    the marker; a secret that already is a marker is left alone (idempotence)."""
    text = marker(kind)
    if not secret_group:
        return lambda m: text

    def replace(m: re.Match[str]) -> str:
        secret = m.group(secret_group)
        if secret is None or secret.startswith(MARKER_PREFIX):
            return m.group(0)
        start, end = m.span(secret_group)
        whole, base = m.group(0), m.start()
        return whole[: start - base] + text + whole[end - base :]

    return replace


def _ruleset_replacer(rule: SecretRule) -> Callable[[re.Match[str]], str]:
    """The ``re.sub`` callback for a ruleset rule, with gitleaks' semantics: the secret is
    the rule's secret group, else its first non-empty group, else the whole match; a
    secret at or below the rule's entropy, or one an allowlist lets through, is kept."""
    text = marker(rule.kind)

    def replace(m: re.Match[str]) -> str:
        group = rule.secret_group
        if group is None:
            group = next((g for g in range(1, (m.re.groups or 0) + 1) if m.group(g)), 0)
        secret = m.group(group)
        if not secret or MARKER_PREFIX in secret:
            return m.group(0)
        if rule.entropy and shannon_entropy(secret) <= rule.entropy:
            return m.group(0)
        if rule.allowlists:
            whole = m.string
            line_end = whole.find("\n", m.end())
            line = whole[whole.rfind("\n", 0, m.start()) + 1 : None if line_end < 0 else line_end]
            if any(a.allows(secret, m.group(0), line) for a in rule.allowlists):
                return m.group(0)
        at, to = m.span(group)
        base = m.start()
        return m.group(0)[: at - base] + text + m.group(0)[to - base :]

    return replace


def load_patterns(source: str) -> dict[str, str]:
    """Extra patterns from inline JSON (``{"kind": "regex"}``) or a JSON/YAML file path."""
    if source.lstrip().startswith("{"):
        data: Any = json.loads(source)
    else:
        path = Path(source)
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError(f"{ENV_PATTERNS}: expected a mapping of kind to regex string")
    return data


@lru_cache(maxsize=1)
def default_redactor() -> Redactor:
    """The process-wide redactor (built-in kinds plus ``CALLWARD_REDACT_PATTERNS``)."""
    return Redactor.from_environment()


def redact_text(s: str) -> str:
    """``s`` with secrets replaced by ``[REDACTED:<kind>]`` (default redactor)."""
    return default_redactor().redact_text(s)


def redact_json_text(text: str) -> str:
    """JSON ``text`` with secrets redacted and re-serialised (default redactor)."""
    return default_redactor().redact_json_text(text)


class RedactingLogFilter(logging.Filter):
    """A handler filter that redacts each record's message, exception text and stack
    before it is written: a log line may quote a value that came from a span or a call
    (an error's text, a backend's answer), and no secret is to reach a log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is logging's own error to report
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def redact_logs(logger: logging.Logger | None = None) -> None:
    """Add :class:`RedactingLogFilter` to every handler of ``logger`` (the root logger by
    default) that lacks one; the command-line entry points call it after configuring
    logging, so every record that reaches those handlers, whichever logger sent it, is
    redacted."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingLogFilter) for f in handler.filters):
            handler.addFilter(RedactingLogFilter())
