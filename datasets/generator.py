"""Realistic multi-agent MCP traffic with labeled incidents, written into a callward store.

Normal traffic is drawn with NumPy, whole arrays at a time: sessions per agent (Poisson,
placed by the agent's hour-of-day rhythm), calls per session (log-normal around the agent's
habit), pauses, tools and argument texts from per-(agent, tool) pools. Incidents and hard
negatives (incidents.py) are scripted call by call and appended. Outcomes (which calls
fail, how long they run) are drawn next, before any decision, because the live gateway
gives a failed call's quota back at its end time and that changes later decisions. Then,
as the real trail does: decisions from the enforcer's batch entry point
(:func:`enforcer.batch.decide_table`, equal to deciding call by call online) under the
example policy, arguments redacted by the collector's redaction, rows written by the
collector's writer. The labels file goes beside the store (labels.py).

The same seed gives the same store, byte for byte in its content.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from callward.bundled import example_policy
from callward.collector.redact import redact_json_text
from callward.collector.store import StoreWriter, save_policy
from callward.datasets.catalog import (
    ARCHETYPES,
    DEFAULT_POOL,
    POOL_SIZE,
    SERVER_OF,
    TOOLS,
    AgentContext,
    Archetype,
    agent_context,
    arguments_text,
    result_excerpt,
)
from callward.datasets.incidents import NONE, SCENARIOS, Scenario, Step
from callward.datasets.labels import Label, write_labels
from callward.enforcer.batch import decide_table
from callward.enforcer.engine import ALLOW
from callward.enforcer.policy import load_policy
from callward.enforcer.vectorize import dense_codes, positions
from callward.record import RECORD_COLUMNS

DEMO_POLICY = example_policy("demo.yaml")
DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC)
SESSION_SIGMA = 0.6
ERROR_TYPES = (
    "ToolError",
    "TimeoutError",
    "FileNotFoundError",
    "HTTPStatusError: 404",
    "ValueError",
)
# Typical latency (ms) and result size (bytes) per tool: log-normal medians.
LATENCY_MS = {
    "fetch": 600.0,
    "http_post": 250.0,
    "run_python_file": 1800.0,
    "run_python_code": 900.0,
    "pip_install_package": 4000.0,
    "query": 120.0,
    "send_email": 400.0,
    "create_charge": 350.0,
}
RESULT_BYTES = {
    "read_file": 3000.0,
    "fetch": 9000.0,
    "query": 2500.0,
    "list_directory": 600.0,
    "git_log": 1500.0,
    "get_file_contents": 4000.0,
}

ProgressFn = Callable[[str, float], None]


@dataclass(frozen=True)
class GenerateConfig:
    out: Path
    agents: int = 7
    days: int = 3
    seed: int = 0
    calls: int | None = None  # target number of normal calls; None = from the agents' habits
    policy: Path = DEMO_POLICY
    start: datetime = DEFAULT_START
    calls_per_incident: int = 40_000  # one incident of each pattern per this many calls
    min_per_pattern: int = 2
    chunk_rows: int = 1_000_000


@dataclass
class GenerateSummary:
    rows: int
    sessions: int
    incidents: int
    hard_negatives: int
    replayed_decisions: int
    decisions: dict[str, int] = field(default_factory=dict)
    labels_path: Path | None = None


@dataclass
class _Agent:
    name: str
    agent_id: str  # "" for an agent whose spans carry no id
    archetype: Archetype
    ctx: AgentContext


def hex_ids(rng: np.random.Generator, n: int, nbytes: int) -> pa.Array:
    """``n`` random lowercase hex ids of ``nbytes`` bytes, built without a Python loop."""
    width = 2 * nbytes
    data = rng.bytes(n * nbytes).hex().encode()
    offsets = np.arange(0, n * width + 1, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _hex(raw: np.ndarray) -> pa.Array:
    """Rows of raw bytes (an ``n x k`` uint8 array) as ``n`` lowercase hex strings."""
    n, k = raw.shape
    data = np.ascontiguousarray(raw).tobytes().hex().encode()
    offsets = np.arange(0, n * 2 * k + 1, 2 * k, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


class _Texts:
    """Distinct strings (argument texts, attribute objects) and who owns each."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self.agent: list[int] = []
        self.tool: list[int] = []
        self._seen: dict[tuple[str, int, int], int] = {}

    def add(self, value: str, agent: int, tool: int) -> int:
        self.values.append(value)
        self.agent.append(agent)
        self.tool.append(tool)
        return len(self.values) - 1

    def intern(self, value: str, agent: int, tool: int) -> int:
        """Like :meth:`add`, but an identical (value, agent, tool) is stored once."""
        key = (value, agent, tool)
        found = self._seen.get(key)
        if found is None:
            found = self._seen[key] = self.add(value, agent, tool)
        return found


def _make_agents(cfg: GenerateConfig, prng: random.Random) -> list[_Agent]:
    agents = []
    for i in range(cfg.agents):
        arche = ARCHETYPES[i % len(ARCHETYPES)]
        name = f"{arche.name}-{i // len(ARCHETYPES) + 1:02d}"
        agents.append(
            _Agent(name, "" if arche.anonymous else name, arche, agent_context(name, i, prng))
        )
    return agents


def _draw_sessions(
    rng: np.random.Generator, agents: list[_Agent], cfg: GenerateConfig, t0: float, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sessions of every agent: (agent index, start epoch seconds, number of calls)."""
    agent_l, start_l, len_l = [], [], []
    for ai, agent in enumerate(agents):
        a = agent.archetype
        n_sess = int(rng.poisson(a.sessions_per_day * cfg.days * scale))
        hours = np.asarray(a.hours) / np.sum(a.hours)
        day = rng.integers(0, cfg.days, n_sess)
        hour = rng.choice(24, n_sess, p=hours)
        start = t0 + day * 86400.0 + hour * 3600.0 + rng.uniform(0, 3600, n_sess)
        length = np.round(rng.lognormal(np.log(a.session_calls), SESSION_SIGMA, n_sess))
        agent_l.append(np.full(n_sess, ai, dtype=np.int64))
        start_l.append(start)
        len_l.append(np.clip(length, 1, 8 * a.session_calls).astype(np.int64))
    return np.concatenate(agent_l), np.concatenate(start_l), np.concatenate(len_l)


def generate(cfg: GenerateConfig, progress: ProgressFn | None = None) -> GenerateSummary:
    """Generate the store at ``cfg.out`` (appending to an existing store) and its labels."""
    report = progress or (lambda _stage, _fraction: None)
    policy = load_policy(cfg.policy)  # an invalid policy stops us before any work
    rng = np.random.default_rng(cfg.seed)
    prng = random.Random(cfg.seed)
    agents = _make_agents(cfg, prng)
    tool_index = {t: i for i, t in enumerate(TOOLS)}
    span_s = cfg.days * 86400.0
    t0 = cfg.start.timestamp()

    # Expected normal calls per agent-day, to scale sessions to the requested total.
    mean_len = [a.archetype.session_calls * np.exp(SESSION_SIGMA**2 / 2) for a in agents]
    expected = (
        sum(a.archetype.sessions_per_day * m for a, m in zip(agents, mean_len, strict=True))
        * cfg.days
    )
    scale = (cfg.calls / expected) if cfg.calls else 1.0

    # ---- argument pools
    report("argument pools", 0.0)
    texts = _Texts()
    attrs = _Texts()
    pool: dict[tuple[int, str], tuple[int, int]] = {}
    attr_base: list[int] = []
    attr_excerpts: list[tuple[int, int]] = []
    for ai, agent in enumerate(agents):
        for tool in agent.archetype.tools:
            size = POOL_SIZE.get(tool, DEFAULT_POOL)
            first = len(texts.values)
            for _ in range(size):
                texts.add(arguments_text(tool, prng, agent.ctx), ai, tool_index[tool])
            pool[(ai, tool)] = (first, size)
        base = {"gen_ai.operation.name": "execute_tool", "gen_ai.system": agent.archetype.service}
        attr_base.append(attrs.add(json.dumps(base), ai, -1))
        first = len(attrs.values)
        if agent.archetype.records_results:
            for _ in range(40):
                attrs.add(
                    json.dumps({**base, "gen_ai.tool.call.result": result_excerpt(prng)}), ai, -1
                )
        attr_excerpts.append((first, len(attrs.values) - first))
        report("argument pools", (ai + 1) / len(agents))

    # ---- sessions and normal calls
    sess_agent, sess_start, sess_len = _draw_sessions(rng, agents, cfg, t0, scale)
    if cfg.calls:
        # Sessions are i.i.d. draws: add batches until there are enough calls, then keep a
        # random prefix, so the store has the requested number of ordinary calls (give or
        # take the last session).
        while sess_len.sum() < cfg.calls:
            more = _draw_sessions(rng, agents, cfg, t0, scale * 0.25)
            sess_agent, sess_start, sess_len = (
                np.concatenate(p)
                for p in zip((sess_agent, sess_start, sess_len), more, strict=True)
            )
        perm = rng.permutation(len(sess_len))
        keep = perm[: int(np.searchsorted(np.cumsum(sess_len[perm]), cfg.calls)) + 1]
        keep.sort()
        sess_agent, sess_start, sess_len = sess_agent[keep], sess_start[keep], sess_len[keep]
    n_normal_sessions = len(sess_agent)
    row_session = np.repeat(np.arange(n_normal_sessions), sess_len)
    row_agent = sess_agent[row_session]
    n = len(row_session)
    report("normal calls", 0.0)

    gap_mean = np.array([a.archetype.gap_seconds for a in agents])[row_agent]
    gaps = rng.exponential(gap_mean) + 0.2
    csum = np.cumsum(gaps)
    sess_first_row = np.concatenate([[0], np.cumsum(sess_len)[:-1]])
    offset = csum - (csum[sess_first_row] - gaps[sess_first_row])[row_session]
    row_time = sess_start[row_session] + offset

    row_tool = np.empty(n, dtype=np.int64)
    row_text = np.empty(n, dtype=np.int64)
    row_attr = np.empty(n, dtype=np.int64)
    row_error = np.zeros(n, dtype=bool)
    for ai, agent in enumerate(agents):
        rows = np.flatnonzero(row_agent == ai)
        a = agent.archetype
        names = list(a.tools)
        weights = np.asarray(list(a.tools.values()), dtype=float)
        pick = rng.choice(len(names), len(rows), p=weights / weights.sum())
        firsts = np.array([pool[(ai, t)][0] for t in names])
        sizes = np.array([pool[(ai, t)][1] for t in names])
        row_tool[rows] = np.array([tool_index[t] for t in names])[pick]
        row_text[rows] = firsts[pick] + rng.integers(0, sizes[pick])
        row_error[rows] = rng.random(len(rows)) < a.error_rate
        first, count = attr_excerpts[ai]
        row_attr[rows] = attr_base[ai]
        if count:
            fetch_rows = rows[row_tool[rows] == tool_index["fetch"]]
            row_attr[fetch_rows] = first + rng.integers(0, count, len(fetch_rows))
        report("normal calls", (ai + 1) / len(agents))

    # ---- incidents and hard negatives
    per_pattern = max(cfg.min_per_pattern, round(n / cfg.calls_per_incident))
    inc_rows: dict[str, list] = {
        k: []
        for k in ("session", "time", "tool", "text", "attr", "error", "etype", "rbytes", "labeled")
    }
    inc_sessions: list[tuple[int, float]] = []  # (agent, start) per incident session
    inc_meta: list[tuple[Scenario, int, int]] = []  # scenario, agent, session index
    report("incidents", 0.0)
    for si, scenario in enumerate(SCENARIOS):
        hosts = [i for i, a in enumerate(agents) if a.archetype.name in scenario.hosts]
        if not hosts:
            continue
        for _ in range(per_pattern):
            ai = prng.choice(hosts)
            agent = agents[ai]
            lo = 0.35 if scenario.needs_history else 0.05
            start = t0 + prng.uniform(lo * span_s, max(lo * span_s, span_s - 4 * 3600))
            steps: list[Step] = scenario.build(prng, agent.ctx, agent.archetype)
            session = n_normal_sessions + len(inc_sessions)
            inc_sessions.append((ai, start))
            inc_meta.append((scenario, ai, session))
            t = start
            for step in steps:
                t += step.gap
                inc_rows["session"].append(session)
                inc_rows["time"].append(t)
                tool_code = tool_index[step.tool]
                inc_rows["tool"].append(tool_code)
                inc_rows["text"].append(texts.intern(step.arguments, ai, tool_code))
                if step.excerpt:
                    base = json.loads(attrs.values[attr_base[ai]])
                    inc_rows["attr"].append(
                        attrs.add(
                            json.dumps({**base, "gen_ai.tool.call.result": step.excerpt}), ai, -1
                        )
                    )
                else:
                    inc_rows["attr"].append(attr_base[ai])
                inc_rows["error"].append(step.outcome == "error")
                inc_rows["etype"].append(step.error_type)
                inc_rows["rbytes"].append(-1 if step.result_bytes is None else step.result_bytes)
                inc_rows["labeled"].append(step.labeled)
        report("incidents", (si + 1) / len(SCENARIOS))

    m = len(inc_rows["session"])
    all_session = np.concatenate([row_session, np.asarray(inc_rows["session"], dtype=np.int64)])
    sess_agent = np.concatenate(
        [sess_agent, np.asarray([a for a, _ in inc_sessions], dtype=np.int64)]
    )
    n_sessions = len(sess_agent)
    all_agent = sess_agent[all_session]
    all_time = np.concatenate([row_time, np.asarray(inc_rows["time"], dtype=float)])
    all_tool = np.concatenate([row_tool, np.asarray(inc_rows["tool"], dtype=np.int64)])
    all_text = np.concatenate([row_text, np.asarray(inc_rows["text"], dtype=np.int64)])
    all_attr = np.concatenate([row_attr, np.asarray(inc_rows["attr"], dtype=np.int64)])
    all_error = np.concatenate([row_error, np.asarray(inc_rows["error"], dtype=bool)])
    total = n + m

    # ---- identifiers
    trace_ids = hex_ids(rng, n_sessions, 16)
    root_spans = hex_ids(rng, n_sessions, 8)
    session_hex = hex_ids(rng, n_sessions, 8)
    anonymous = np.array([agents[a].archetype.anonymous for a in sess_agent.tolist()])
    session_ids = pc.if_else(
        pa.array(anonymous), "", pc.binary_join_element_wise("sess_", session_hex, "")
    )
    span_raw = np.frombuffer(rng.bytes(total * 8), dtype=np.uint8).reshape(total, 8)
    call_raw = np.frombuffer(rng.bytes(total * 12), dtype=np.uint8).reshape(total, 12)

    # ---- outcomes, latency, result sizes: drawn before deciding, as the world decides them
    # whatever the policy says, so that a call that fails gives its quota back at its end
    # time as it does live (a call the policy stops never runs: its draws go unused)
    lat = np.array([LATENCY_MS.get(t, 80.0) for t in TOOLS])[all_tool]
    run_ms = rng.lognormal(np.log(lat), 0.7)
    refused_ms = rng.uniform(0.05, 0.5, total)
    rbytes_med = np.array([RESULT_BYTES.get(t, 300.0) for t in TOOLS])[all_tool]
    rbytes = np.round(rng.lognormal(np.log(rbytes_med), 0.9)).astype(np.int64)
    inc_rbytes = np.asarray(inc_rows["rbytes"], dtype=np.int64)
    rbytes[n:] = np.where(inc_rbytes >= 0, inc_rbytes, 0)
    # error types as codes into one small table (no per-call Python strings)
    etypes = ["", *ERROR_TYPES]
    inc_etype_codes = []
    for e in inc_rows["etype"]:
        if e and e not in etypes:
            etypes.append(e)
        inc_etype_codes.append(etypes.index(e) if e else 1)
    etype_code = rng.integers(1, len(ERROR_TYPES) + 1, total)
    etype_code[n:] = np.asarray(inc_etype_codes, dtype=np.int64)
    start_us = np.round((all_time) * 1e6).astype(np.int64)
    run_end_us = start_us + np.round(run_ms * 1e3).astype(np.int64)
    span_ids = _hex(span_raw)

    # ---- decisions: the enforcer's batch entry point, as the live gateway would decide
    report("policy decisions", 0.0)
    calls = _calls_to_decide(
        agents, texts, session_ids, all_agent, all_tool, all_text, all_session, start_us
    ).with_columns(
        pl.Series("end_us", run_end_us),
        pl.Series("span_id", span_ids),
        pl.Series("fails", all_error),
    )
    decided, stats = decide_table(calls, {policy.version: policy}, policy.version)
    dec_code, dec_first = dense_codes(*decided.get_columns())
    dec_table: list[tuple[str, str, str]] = decided[positions(dec_first)].rows()
    executed = np.array([d[0] == ALLOW for d in dec_table])[dec_code]
    report("policy decisions", 1.0)

    duration = np.where(executed, run_ms, refused_ms)
    outcome_err = all_error & executed
    etype_code[~outcome_err] = 0
    outcome_code = np.where(executed, np.where(outcome_err, 2, 1), 0)
    rb_valid = executed & ~outcome_err

    # ---- redaction, as the trail stores arguments
    report("redaction", 0.0)
    redacted = pa.array([redact_json_text(v) for v in texts.values], type=pa.string())
    report("redaction", 1.0)

    end_us = start_us + np.round(duration * 1e3).astype(np.int64)
    order = np.lexsort((np.arange(total), start_us))
    lookups = {
        "agent_id": (pa.array([a.agent_id for a in agents]), all_agent),
        "grant": (pa.array([a.archetype.grant for a in agents]), all_agent),
        "service_name": (pa.array([a.archetype.service for a in agents]), all_agent),
        "server": (pa.array([SERVER_OF[t] for t in TOOLS]), all_tool),
        "tool": (pa.array(list(TOOLS)), all_tool),
        "arguments": (redacted, all_text),
        "decision": (pa.array([d[0] for d in dec_table]), dec_code),
        "rule": (pa.array([d[1] for d in dec_table]), dec_code),
        "message": (pa.array([d[2] for d in dec_table]), dec_code),
        "outcome": (pa.array(["", "ok", "error"]), outcome_code),
        "error_type": (pa.array(etypes), etype_code),
        "attributes": (pa.array(attrs.values, pa.string()), all_attr),
        "trace_id": (trace_ids, all_session),
        "parent_span_id": (root_spans, all_session),
        "session_id": (session_ids, all_session),
    }

    # ---- write through the collector's writer, a time-ordered chunk at a time, so memory
    # holds the per-call codes and one chunk of text, never the whole table twice
    writer = StoreWriter(cfg.out)
    for i in range(0, total, cfg.chunk_rows):
        idx = order[i : i + cfg.chunk_rows]
        columns = {
            "start_time": pa.array(start_us[idx], pa.timestamp("us", tz="UTC")),
            "end_time": pa.array(end_us[idx], pa.timestamp("us", tz="UTC")),
            "span_id": span_ids.take(pa.array(idx)),
            "call_id": pc.binary_join_element_wise("call_", _hex(call_raw[idx]), ""),
            "policy_version": pa.array([policy.version]).take(
                pa.array(np.zeros(len(idx), dtype=np.int64))
            ),
            "duration_ms": pa.array(duration[idx]),
            "result_bytes": pa.array(rbytes[idx], mask=~rb_valid[idx]),
        }
        for name, (values, codes) in lookups.items():
            columns[name] = values.take(pa.array(codes[idx]))
        writer.write(pa.table({name: columns[name] for name in RECORD_COLUMNS}))
        report("writing store", min(1.0, (i + cfg.chunk_rows) / total))
    writer.close()
    # Keep the deciding policy where replay looks for it, as the collector does for a
    # live enforcer, so replay can measure its fidelity on generated stores too.
    save_policy(Path(cfg.out), policy.version, policy.canonical)

    # ---- labels beside the store
    labels = _labels(
        cfg, inc_meta, inc_rows, n, agents, session_ids.to_pylist(), trace_ids, span_raw, start_us
    )
    path = write_labels(Path(cfg.out), labels)
    counts = np.bincount(dec_code, minlength=len(dec_table))
    by_decision: dict[str, int] = {}
    for (d, _, _), c in zip(dec_table, counts.tolist(), strict=True):
        by_decision[d] = by_decision.get(d, 0) + c
    return GenerateSummary(
        rows=total,
        sessions=n_sessions,
        incidents=sum(1 for s, _, _ in inc_meta if s.kind != NONE),
        hard_negatives=sum(1 for s, _, _ in inc_meta if s.kind == NONE),
        replayed_decisions=stats.sequential_calls,
        decisions=by_decision,
        labels_path=path,
    )


def _calls_to_decide(
    agents: list[_Agent],
    texts: _Texts,
    session_ids: pa.Array,
    agent: np.ndarray,
    tool: np.ndarray,
    text: np.ndarray,
    session: np.ndarray,
    start_us: np.ndarray,
) -> pl.DataFrame:
    """The calls as the enforcer sees them (arguments before redaction), in the columns
    :func:`enforcer.batch.decide_table` reads. Text columns are Categorical, gathered from
    the small tables by code: the batch numbers calls by those codes without hashing."""

    def column(name: str, values: Sequence[str] | pa.Array, codes: np.ndarray) -> pl.Series:
        if isinstance(values, pa.Array):
            table = pl.Series(name, values.to_pylist(), dtype=pl.String)
        else:
            table = pl.Series(name, values, dtype=pl.String)
        return table.cast(pl.Categorical).gather(positions(codes))

    return pl.DataFrame(
        [
            pl.Series("start_us", start_us),
            column("agent_id", [a.agent_id for a in agents], agent),
            column("session_id", session_ids, session),
            column("grant", [a.archetype.grant for a in agents], agent),
            column("server", [SERVER_OF[t] for t in TOOLS], tool),
            column("tool", list(TOOLS), tool),
            column("arguments", texts.values, text),
        ]
    )


def _labels(
    cfg: GenerateConfig,
    inc_meta: list[tuple[Scenario, int, int]],
    inc_rows: dict[str, list],
    n_normal: int,
    agents: list[_Agent],
    session_ids: Sequence[str],
    trace_ids: pa.Array,
    span_raw: np.ndarray,
    start_us: np.ndarray,
) -> list[Label]:
    sessions = np.asarray(inc_rows["session"], dtype=np.int64)
    labeled = np.asarray(inc_rows["labeled"], dtype=bool)
    out = []
    for k, (scenario, ai, session) in enumerate(inc_meta):
        rows = np.flatnonzero((sessions == session) & labeled) + n_normal
        spans = _hex(span_raw[rows]).to_pylist()
        first = datetime.fromtimestamp(0, UTC) + timedelta(microseconds=int(start_us[rows].min()))
        last = datetime.fromtimestamp(0, UTC) + timedelta(microseconds=int(start_us[rows].max()))
        out.append(
            Label(
                incident_id=f"s{cfg.seed}-{k:05d}",
                kind=scenario.kind,
                pattern=scenario.pattern,
                agent=agents[ai].name,
                agent_id=agents[ai].agent_id,
                session_id=session_ids[session],
                trace_id=trace_ids[session].as_py(),
                span_ids=tuple(spans),
                first_seen=first,
                last_seen=last,
            )
        )
    return out
