"""The rate-limit rules of enforcer.limits against an oracle written here, from the contract.

The oracle counts allowed calls per (counter, scope value, window number) with integer
microseconds (``t_us // (w * 1_000_000)``), never with the module's own keys, gives a
failed call's units back to the windows it took them from, and applies the reload rule
from docs/policy.md itself. The engine side is ``decide`` plus the module's ``release``,
``carry_over`` and ``surviving_keys``, as the service core drives them.
"""

from __future__ import annotations

import heapq
import io
import json
import tokenize
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, settings, target
from hypothesis import strategies as st

from callward.enforcer import limits
from callward.enforcer.engine import Request, decide
from callward.enforcer.limits import InMemoryLimitState
from callward.enforcer.policy import PolicyInvalid, compile_document, compile_text

REPO = Path(__file__).resolve().parents[2]
BASE_US = 1_700_000_000 // 86400 * 86400 * 1_000_000  # a UTC midnight, in microseconds
WINDOW_LEN = {"minute": 60, "hour": 3600, "day": 86400}
SCOPE_FIELD = {"grant": "grant", "agent": "agent_id", "session": "session_id", "global": None}
COUNTERS = ("c1", "c2", "c3")
TOOLS = ("a", "b", "c")  # "c" never has an entry: the default decides it
CASES = ("met a denial", "contended window", "release", "reload", "reload reset a counter in use")


# --------------------------------------------------------------------------- the oracle


def scope_value(scope: str, req: Request) -> str:
    if scope == "tool":
        return f"{req.server}/{req.tool}" if req.server else req.tool
    name = SCOPE_FIELD[scope]
    return "" if name is None else str(getattr(req, name))


@dataclass
class Oracle:
    """The contract of docs/policy.md, counted by hand."""

    doc: dict[str, Any]
    counts: Counter[tuple[str, str, int]] = field(default_factory=Counter)

    def settings(self) -> dict[str, tuple[str, int, str]]:
        return {c: (s["window"], s["max"], s["scope"]) for c, s in _settings_of(self.doc).items()}

    def applicable(self, tool: str) -> list[tuple[str, dict[str, Any]]] | None:
        """(pointer, limit) in checking order; None when the default denies the call."""
        tools = self.doc["tools"]
        if tool in tools:
            own = [(f"/tools/{tool}/limits/{i}", x) for i, x in enumerate(tools[tool]["limits"])]
        elif self.doc["default"] == "allow":
            own = []
        else:
            return None
        shared = self.doc.get("all_tools", {}).get("limits", [])
        return own + [(f"/all_tools/limits/{i}", x) for i, x in enumerate(shared)]

    def decide(self, req: Request, t_us: int) -> tuple[str, str, list[tuple[str, str, int]]]:
        """(decision, rule, keys taken as (counter, scope value, window start in s))."""
        applicable = self.applicable(req.tool)
        if applicable is None:
            return "deny", "/default", []
        keys: list[tuple[str, str, int]] = []
        seen: set[str] = set()
        for pointer, lim in applicable:
            if lim["counter"] in seen:  # one shared counter listed twice is counted once
                continue
            seen.add(lim["counter"])
            w = WINDOW_LEN[lim["window"]]
            key = (lim["counter"], scope_value(lim["scope"], req), t_us // (w * 1_000_000) * w)
            if self.counts[key] >= lim["max"]:
                return "deny", pointer, []
            keys.append(key)
        for key in keys:
            self.counts[key] += 1
        return "allow", "/tools/" + req.tool if req.tool in self.doc["tools"] else "/default", keys

    def release(self, keys: list[tuple[str, str, int]]) -> None:
        for key in keys:
            self.counts[key] -= 1
            assert self.counts[key] >= 0

    def reload(self, new_doc: dict[str, Any]) -> set[str]:
        """Keep the counters whose (window, max, scope) is the same in both; returns them."""
        old, self.doc = self.settings(), new_doc
        kept = {c for c, s in self.settings().items() if old.get(c) == s}
        self.counts = Counter({k: n for k, n in self.counts.items() if k[0] in kept})
        return kept


# --------------------------------------------------------------------------- strategies


def _settings_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for lim in doc.get("all_tools", {}).get("limits", []):
        out[lim["counter"]] = lim
    for entry in doc["tools"].values():
        for lim in entry["limits"]:
            out[lim["counter"]] = lim
    return out


FIELDS: dict[str, list[Any]] = {
    "window": list(WINDOW_LEN),
    "max": [0, 1, 2, 3],
    "scope": [*SCOPE_FIELD, "tool"],
}
setting_st = st.fixed_dictionaries({k: st.sampled_from(v) for k, v in FIELDS.items()})


@st.composite
def documents(draw: st.DrawFn, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """A limits-only policy. Given ``previous``, each counter's setting is kept or redrawn,
    so a reload changes some counters and leaves others."""
    settings_by_name: dict[str, dict[str, Any]] = {}
    before = _settings_of(previous) if previous is not None else {}
    for name in COUNTERS:
        if name not in before:
            settings_by_name[name] = draw(setting_st)
            continue
        # Keep the setting, or change exactly one field of it (so a reload that changes only
        # a window, only a max or only a scope is common).
        kept = {k: before[name][k] for k in ("window", "max", "scope")}
        change = draw(st.sampled_from([None, "window", "max", "scope"]))
        if change is not None:
            kept[change] = draw(st.sampled_from([v for v in FIELDS[change] if v != kept[change]]))
        settings_by_name[name] = kept

    def limit_list(max_size: int) -> list[dict[str, Any]]:
        names = draw(st.lists(st.sampled_from(COUNTERS), max_size=max_size, unique=True))
        return [{"counter": n, **settings_by_name[n]} for n in names]

    doc: dict[str, Any] = {
        "version": "1",
        "default": draw(st.sampled_from(["allow", "deny"])),
        "tools": {t: {"limits": limit_list(2)} for t in draw(st.sets(st.sampled_from(TOOLS[:2])))},
    }
    shared = limit_list(2)
    if shared:
        doc["all_tools"] = {"limits": shared}
    return doc


# Offsets into a few minutes after a midnight: exact boundaries, a microsecond before them,
# and anywhere in between, so that calls share windows and cross them.
offset_st = st.one_of(
    st.sampled_from([0, 59_999_999, 60_000_000, 119_999_999, 120_000_000]),
    st.integers(0, 180_000_000),
)
call_st = st.fixed_dictionaries(
    {
        "tool": st.sampled_from(TOOLS),
        "grant": st.sampled_from(["g1", "g2"]),
        "agent_id": st.sampled_from(["x", "y"]),
        "session_id": st.just("s1"),
        "t": offset_st,
        # None: the call succeeds; else it fails and is reported this many µs later.
        "report_after": st.one_of(st.none(), st.sampled_from([0, 1, 30_000_000, 61_000_000])),
    }
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, Any], list[tuple[int, Any]]]:
    """A first policy and a timeline of ("call", call) and ("reload", document) events."""
    first = draw(documents())
    calls = draw(st.lists(call_st, min_size=1, max_size=40))
    reload_times = draw(st.lists(offset_st, max_size=2))
    docs, doc = [], first
    for _ in reload_times:
        doc = draw(documents(previous=doc))
        docs.append(doc)
    events: list[tuple[int, Any]] = [(c["t"], ("call", c)) for c in calls]
    # A reload at time t comes before the calls at t (it happened first).
    events += [(t, ("reload", d)) for t, d in zip(sorted(reload_times), docs, strict=True)]
    events.sort(key=lambda e: (e[0], e[1][0] != "reload"))
    return first, events


# --------------------------------------------------------------------------- the run


def run(scenario: tuple[dict[str, Any], list[tuple[int, Any]]]) -> Counter[str]:
    """Drive the engine and the oracle through one timeline; assert they agree call by call.

    Returns which of ``CASES`` the run reached (and how many denials)."""
    first, events = scenario
    policy = compile_document(first)
    state = InMemoryLimitState()
    oracle = Oracle(first)
    reached: Counter[str] = Counter()
    # (time, seq, engine keys, oracle keys) of failed calls waiting for their Report.
    pending: list[tuple[int, int, tuple[Any, ...], list[Any]]] = []

    def report_until(t_us: int) -> None:
        while pending and pending[0][0] <= t_us:  # a release at the same µs comes first
            _, _, engine_keys, oracle_keys = heapq.heappop(pending)
            limits.release(state, engine_keys)
            oracle.release(oracle_keys)
            reached["release"] += 1

    for seq, (offset, (kind, item)) in enumerate(events):
        t_us = BASE_US + offset
        report_until(t_us)
        if kind == "reload":
            new = compile_document(item)
            held = {k[0] for k in state.counts}
            kept, _ = limits.carry_over(state, policy, new)
            policy = new
            assert kept == oracle.reload(item)
            if held - kept:
                reached["reload reset a counter in use"] += 1
            pending = [
                (at, s, limits.surviving_keys(ek, kept), [k for k in ok if k[0] in kept])
                for at, s, ek, ok in pending
            ]
            heapq.heapify(pending)
            reached["reload"] += 1
            continue
        req = Request(
            item["tool"], {}, grant=item["grant"], agent_id=item["agent_id"], session_id="s1"
        )
        if any(oracle.counts[k] for k in _oracle_keys(oracle, req, t_us)):
            reached["contended window"] += 1
        want, want_rule, want_keys = oracle.decide(req, t_us)
        got = decide(policy, req, state, t_us / 1_000_000)
        assert (got.decision, got.rule) == (want, want_rule), (item, offset)
        assert list(got.reserved) == want_keys
        if want == "deny" and want_rule != "/default":
            reached["met a denial"] += 1
        if got.reserved and item["report_after"] is not None:
            heapq.heappush(
                pending, (t_us + item["report_after"], seq, got.reserved, list(want_keys))
            )
        assert state.counts == {k: n for k, n in oracle.counts.items() if n}
    return reached


def _oracle_keys(oracle: Oracle, req: Request, t_us: int) -> list[tuple[str, str, int]]:
    out = []
    for _, lim in oracle.applicable(req.tool) or []:
        w = WINDOW_LEN[lim["window"]]
        out.append((lim["counter"], scope_value(lim["scope"], req), t_us // (w * 1_000_000) * w))
    return out


@given(scenarios())
def test_engine_counts_as_the_contract_says(scenario: Any) -> None:
    reached = run(scenario)
    for case in CASES:
        if reached[case]:
            event(case)
    target(float(reached["met a denial"]), label="denials")


def test_the_scenarios_reach_every_case() -> None:
    """A fixed sample of the strategy meets denials, shared windows, releases and reloads;
    fails if a change to the strategy stops it reaching one of them."""
    seen: Counter[str] = Counter()

    @settings(derandomize=True, max_examples=100, database=None)
    @given(scenarios())
    def sample(scenario: Any) -> None:
        seen.update({case for case, n in run(scenario).items() if n})

    sample()
    for case in CASES:
        assert seen[case] > 0, (case, seen)


# --------------------------------------------------------------------------- boundaries


def _one_limit(maximum: int) -> Any:
    return compile_document(
        {
            "version": "1",
            "default": "deny",
            "tools": {
                "t": {
                    "limits": [
                        {"counter": "n", "window": "minute", "max": maximum, "scope": "global"}
                    ]
                }
            },
        }
    )


@pytest.mark.parametrize("maximum", [1, 2, 3])
@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_max_minus_one_max_and_max_plus_one_calls(maximum: int, extra: int) -> None:
    policy, state = _one_limit(maximum), InMemoryLimitState()
    now = BASE_US / 1e6 + 10
    got = [decide(policy, Request("t", {}), state, now).decision for _ in range(maximum + extra)]
    allowed = min(maximum, maximum + extra)
    assert got == ["allow"] * allowed + ["deny"] * (maximum + extra - allowed)


def test_a_call_on_the_boundary_opens_a_new_window_and_a_microsecond_before_does_not() -> None:
    policy, state = _one_limit(1), InMemoryLimitState()
    boundary_us = BASE_US + 60_000_000
    assert decide(policy, Request("t", {}), state, (boundary_us - 30_000_000) / 1e6).allowed
    before = decide(policy, Request("t", {}), state, (boundary_us - 1) / 1e6)
    assert (before.decision, before.rule) == ("deny", "/tools/t/limits/0")
    on = decide(policy, Request("t", {}), state, boundary_us / 1e6)
    assert on.allowed and on.reserved == (("n", "", boundary_us // 1_000_000),)


def test_a_release_after_the_window_turned_gives_back_to_the_old_window() -> None:
    policy, state = _one_limit(1), InMemoryLimitState()
    first = decide(policy, Request("t", {}), state, BASE_US / 1e6 + 59)
    assert decide(policy, Request("t", {}), state, BASE_US / 1e6 + 61).allowed
    assert limits.release(state, first.reserved) == 1
    assert state.counts == {("n", "", BASE_US // 1_000_000 + 60): 1}
    assert decide(policy, Request("t", {}), state, BASE_US / 1e6 + 59.5).allowed


@given(st.integers(-(2**40), 2**52), st.sampled_from(list(WINDOW_LEN.values())))
def test_window_start_is_the_floor_of_the_time_in_microseconds(t_us: int, w: int) -> None:
    # Python's float floor division, against integer floor division in microseconds; they
    # agree at microsecond resolution as long as the float keeps the microsecond.
    if abs(t_us) < 2**50:
        assert limits.window_start(t_us / 1e6, w) == t_us // (w * 1_000_000) * w
    one = np.array([t_us], dtype=np.int64)
    exact = abs(t_us) < 2**32 * 1_000_000
    for exact_int in {False, exact}:
        assert limits.window_starts(one, w, exact_int)[0] == limits.window_start(t_us / 1e6, w)


def test_a_reload_keeps_exactly_the_unchanged_counters() -> None:
    def doc(window: str, maximum: int, scope: str) -> dict[str, Any]:
        return {
            "version": "1",
            "tools": {
                "t": {
                    "limits": [
                        {"counter": "same", "window": "hour", "max": 2, "scope": "grant"},
                        {"counter": "moved", "window": window, "max": maximum, "scope": scope},
                    ]
                }
            },
        }

    old = compile_document(doc("minute", 2, "grant"))
    for changed in (doc("hour", 2, "grant"), doc("minute", 3, "grant"), doc("minute", 2, "agent")):
        assert limits.surviving_counters(old, compile_document(changed)) == {"same"}
    assert limits.surviving_counters(old, compile_document(doc("minute", 2, "grant"))) == {
        "same",
        "moved",
    }


# --------------------------------------------------------------------------- one home


_WINDOWISH = {"w", "seconds", "window_seconds", "length"}


def _window_arithmetic(path: Path) -> list[str]:
    """Lines of code (strings and comments ignored) with window arithmetic or a reload's
    counter filtering."""
    found = []
    tokens = [
        t
        for t in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        if t.type not in (tokenize.STRING, tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE)
    ]
    for i, tok in enumerate(tokens):
        prev = tokens[i - 1].string if i else ""
        nxt = tokens[i + 1].string if i + 1 < len(tokens) else ""
        if (
            (tok.string == "//" and (prev == "now" or nxt in _WINDOWISH))
            or (tok.string in ("floor", "floor_divide") and prev == ".")
            or tok.string in ("retain_counters", "limit_signatures")
        ):
            found.append(f"{path.relative_to(REPO)}:{tok.start[0]}: {tok.line.strip()}")
    return found


def test_window_arithmetic_lives_only_in_limits() -> None:
    # limits.py is the home; the policy modules define the signatures it compares.
    own = {REPO / "enforcer" / n for n in ("limits.py", "policy.py", "policy_model.py")}
    offenders = [
        hit
        for folder in ("enforcer", "replay", "datasets")
        for path in sorted((REPO / folder).rglob("*.py"))
        if path not in own and "_pb2" not in path.name
        for hit in _window_arithmetic(path)
    ]
    assert offenders == []


# --------------------------------------------------------------------------- sliding windows


def _sliding(maximum: int, window: str = "minute", sliding: bool = True) -> Any:
    limit = {"counter": "n", "window": window, "max": maximum, "scope": "global"}
    if sliding:
        limit["sliding"] = True
    return compile_document(
        {"version": "1", "default": "deny", "tools": {"t": {"limits": [limit]}}}
    )


def _burst(policy: Any) -> list[str]:
    """10 calls in the last half second of a minute, 10 in the first tenth of the next."""
    state, minute = InMemoryLimitState(), BASE_US + 60_000_000
    times = [minute - 500_000 + i * 40_000 for i in range(10)]
    times += [minute + i * 10_000 for i in range(10)]
    return [decide(policy, Request("t", {}), state, t / 1e6).decision for t in times]


def test_a_burst_across_a_minute_boundary_passes_a_calendar_limit_but_not_a_sliding_one() -> None:
    assert _burst(_sliding(10, sliding=False)) == ["allow"] * 20
    assert _burst(_sliding(10)) == ["allow"] * 10 + ["deny"] * 10


def test_a_sliding_window_is_open_at_its_start() -> None:
    policy, state = _sliding(1), InMemoryLimitState()
    t0 = BASE_US + 7_123_456  # not on any calendar boundary
    assert decide(policy, Request("t", {}), state, t0 / 1e6).allowed
    late = decide(policy, Request("t", {}), state, (t0 + 60_000_000 - 1) / 1e6)
    assert (late.decision, late.message) == (
        "deny",
        "rate limit 'n' reached: 1 per sliding minute per global",
    )
    again = decide(policy, Request("t", {}), state, (t0 + 60_000_000) / 1e6)
    assert again.allowed and again.reserved == (limits.SlidingKey("n", "", t0 + 60_000_000),)


def test_a_failed_call_gives_back_its_own_instant() -> None:
    policy, state = _sliding(2), InMemoryLimitState()
    first = decide(policy, Request("t", {}), state, BASE_US / 1e6 + 1)
    second = decide(policy, Request("t", {}), state, BASE_US / 1e6 + 2)
    assert not decide(policy, Request("t", {}), state, BASE_US / 1e6 + 3).allowed
    limits.release(state, second.reserved)
    assert state.instants == {("n", ""): [BASE_US + 1_000_000]}
    assert decide(policy, Request("t", {}), state, BASE_US / 1e6 + 4).allowed
    limits.release(state, first.reserved)
    assert state.instants == {("n", ""): [BASE_US + 4_000_000]}


def test_two_calls_at_one_microsecond_are_two_calls() -> None:
    policy, state = _sliding(2), InMemoryLimitState()
    at = BASE_US / 1e6 + 5
    a, b = (decide(policy, Request("t", {}), state, at) for _ in range(2))
    assert a.reserved == b.reserved and not decide(policy, Request("t", {}), state, at).allowed
    limits.release(state, a.reserved)
    assert state.count_since(a.reserved[0], 60_000_000) == 1


def test_prune_keeps_exactly_the_instants_a_later_call_can_see() -> None:
    policy, state = _sliding(5), InMemoryLimitState()
    for s in (0, 10, 20, 30):
        decide(policy, Request("t", {}), state, BASE_US / 1e6 + s)
    # At +70 s a call sees (10, 70]: the call at 0 and the one at exactly 10 are gone.
    assert state.prune(BASE_US / 1e6 + 70, limits.window_lengths(policy)) == 2
    assert state.instants == {("n", ""): [BASE_US + 20_000_000, BASE_US + 30_000_000]}
    # A counter the policy no longer has is dropped whole.
    assert state.prune(BASE_US / 1e6 + 71, {}) == 2 and state.instants == {}


@settings(max_examples=200)
@given(
    st.integers(1, 4),
    st.lists(
        st.tuples(
            # On a 5 s grid (calls straddle minute boundaries) or anywhere in 200 s.
            st.integers(0, 40).map(lambda k: k * 5_000_000) | st.integers(0, 200_000_000),
            st.booleans(),
        ),
        max_size=40,
    ),
)
def test_no_span_of_the_window_holds_more_than_max_allowed_calls(
    maximum: int, calls: list[tuple[int, bool]]
) -> None:
    """Checked over every span of 60 s that opens just after a call, not from the keys."""
    policy, state = _sliding(maximum), InMemoryLimitState()
    held: list[int] = []
    for t_us, failed in sorted(calls):
        d = decide(policy, Request("t", {}), state, (BASE_US + t_us) / 1e6)
        inside = sum(1 for s in held if t_us - 60_000_000 < s)
        assert d.allowed == (inside < maximum)
        if d.allowed and not failed:
            held.append(t_us)
        elif d.allowed:
            limits.release(state, d.reserved)
    event(f"some call denied or given back: {len(calls) > len(held)}")
    for start in held:
        assert sum(1 for s in held if start <= s < start + 60_000_000) <= maximum


def test_a_reload_that_makes_a_limit_sliding_resets_it() -> None:
    calendar, sliding = _sliding(1, sliding=False), _sliding(1)
    assert limits.surviving_counters(calendar, sliding) == set()
    assert limits.surviving_counters(sliding, _sliding(1)) == {"n"}
    state = InMemoryLimitState()
    decide(sliding, Request("t", {}), state, BASE_US / 1e6)
    kept, reset = limits.carry_over(state, sliding, calendar)
    assert (kept, reset, state.instants) == (set(), {"n"}, {})


@pytest.mark.parametrize(
    ("limits_doc", "code"),
    [
        (
            [
                {"counter": "n", "window": "minute", "max": 1, "sliding": True},
                {"counter": "n", "window": "minute", "max": 1},
            ],
            "counter_conflict",
        ),
        ([{"counter": "n", "window": "minute", "max": 1, "sliding": "yes"}], "type"),
    ],
)
def test_sliding_is_a_boolean_kept_alike_by_every_use_of_a_counter(
    limits_doc: list[dict[str, Any]], code: str
) -> None:
    text = json.dumps({"version": "1", "tools": {"t": {"limits": limits_doc}}})
    with pytest.raises(PolicyInvalid) as caught:
        compile_text(text)
    assert code in {e.code for e in caught.value.errors}


# --------------------------------------------------------------------------- keys and pruning


def _scoped(scope: str, sliding: bool) -> Any:
    limit = {"counter": "k", "window": "hour", "max": 9, "scope": scope, "sliding": sliding}
    return compile_document(
        {"version": "1", "default": "allow", "all_tools": {"limits": [limit]}, "tools": {}}
    )


_ids = st.text(alphabet="ab/-", max_size=3)


@given(
    st.sampled_from(["grant", "agent", "session", "tool", "global"]),
    st.booleans(),
    st.builds(Request, tool=st.sampled_from(["t", "u"]), arguments=st.just({}), server=_ids,
              grant=_ids, agent_id=_ids, session_id=_ids),
    st.integers(-(2**40), 2**50),  # before 1970 too: floor, not truncation
)  # fmt: skip
def test_counter_key_is_counter_scope_key_and_window_start(
    scope: str, sliding: bool, req: Request, t_us: int
) -> None:
    # Rule 2 of docs/policy.md, and the keys an allowed call reserves are these keys.
    policy = _scoped(scope, sliding)
    (lim,) = policy.all_tools_limits
    now = t_us / 1e6
    assert limits.scope_key(lim, req) == scope_value(scope, req)
    key = limits.counter_key(lim, req, now)
    if sliding:
        assert key == limits.SlidingKey("k", scope_value(scope, req), limits.instant_us(now))
        assert type(key) is limits.SlidingKey
    else:
        assert key == ("k", scope_value(scope, req), limits.window_start(now, 3600))
    assert decide(policy, req, InMemoryLimitState(), now).reserved == (key,)


def test_window_numbers_in_integer_mode_at_todays_times() -> None:
    # The batch's integer shortcut, at times near now (2**32 s is its bound): the window
    # number of each call, as an integer, for every window length.
    times = np.array([BASE_US + d for d in (-1, 0, 1, 59_999_999, 60_000_000, 86_400_000_000)])
    for w in WINDOW_LEN.values():
        expected = [t // (w * 1_000_000) for t in times.tolist()]
        for exact_int in (True, False):
            numbers = limits.window_numbers(times, w, exact_int)
            assert numbers.dtype == np.int64 and numbers.tolist() == expected
            assert limits.window_starts(times, w, exact_int).tolist() == [n * w for n in expected]


def test_prune_without_window_lengths_keeps_what_a_day_long_window_needs() -> None:
    day_us = 86_400 * 1_000_000
    state = InMemoryLimitState()
    state.add([("n", "", BASE_US // 1_000_000)])
    state.add([limits.SlidingKey("s", "", BASE_US)])
    assert state.prune((BASE_US + day_us - 1) / 1e6) == 0
    assert state.prune((BASE_US + day_us) / 1e6) == 2
    assert state.counts == {} and state.instants == {}


def test_prune_counts_everything_it_dropped() -> None:
    state = InMemoryLimitState()
    state.add([("n", "a", 0), ("n", "b", 0), ("n", "b", 60)])
    state.add([limits.SlidingKey("s", sc, BASE_US + i) for sc in "ab" for i in range(3)])
    assert state.prune(BASE_US / 1e6 + 3600, {"n": 60, "s": 60}) == 9


def test_a_clock_that_stepped_back_keeps_the_instants_in_order() -> None:
    policy, state = _sliding(3), InMemoryLimitState()
    later, earlier = BASE_US / 1e6 + 30, BASE_US / 1e6 + 20
    first = decide(policy, Request("t", {}), state, later)
    decide(policy, Request("t", {}), state, earlier)
    decide(policy, Request("t", {}), state, later)
    assert state.instants == {("n", ""): [BASE_US + 20_000_000] + [BASE_US + 30_000_000] * 2}
    assert not decide(policy, Request("t", {}), state, later).allowed
    limits.release(state, first.reserved)
    assert state.instants == {("n", ""): [BASE_US + 20_000_000, BASE_US + 30_000_000]}


def test_releasing_what_is_not_held_changes_nothing() -> None:
    # Rule 5 gives back a call's own units, no more: a sliding release of an instant that is
    # not held (sent twice, or after a reload reset the counter) takes no other call's, and
    # a calendar key that holds nothing stays at nothing. (Two calls of one calendar window
    # share a key, so there a second release of one call cannot be told from the other's.)
    policy = compile_document(
        {
            "version": "1",
            "tools": {
                "t": {
                    "limits": [
                        {"counter": "s", "window": "minute", "max": 5, "sliding": True},
                        {"counter": "c", "window": "minute", "max": 5},
                    ]
                }
            },
        }
    )
    state = InMemoryLimitState()
    kept = decide(policy, Request("t", {}), state, BASE_US / 1e6 + 10)
    gone = decide(policy, Request("t", {}), state, BASE_US / 1e6 + 20)
    assert len(gone.reserved) == 2
    limits.release(state, gone.reserved)  # a sliding key and a calendar key, both released
    assert state.instants == {("s", ""): [BASE_US + 10_000_000]}
    assert state.counts == {kept.reserved[1]: 1}
    limits.release(state, gone.reserved[:1])
    limits.release(state, [limits.SlidingKey("s", "", BASE_US + 5_000_000)])
    limits.release(state, [limits.SlidingKey("s", "", BASE_US + 50_000_000)])
    limits.release(state, [("c", "", 0)])
    assert state.instants == {("s", ""): [BASE_US + 10_000_000]}
    assert state.counts == {kept.reserved[1]: 1}


def test_a_reload_resets_the_old_counters_and_those_only_the_state_holds() -> None:
    def doc(s_sliding: bool, gone: bool) -> dict[str, Any]:
        lims = [
            {"counter": "a", "window": "minute", "max": 5},
            {"counter": "s", "window": "minute", "max": 5, "sliding": s_sliding},
        ]
        if gone:
            lims.append({"counter": "gone", "window": "hour", "max": 5})
        return {"version": "1", "tools": {"t": {"limits": lims}}}

    old, new = compile_document(doc(True, True)), compile_document(doc(False, False))
    state = InMemoryLimitState()
    state.add([("a", "g", 0), ("orphan", "g", 0), limits.SlidingKey("s", "g", 1)])
    kept, reset = limits.carry_over(state, old, new)
    assert (kept, reset) == ({"a"}, {"s", "gone", "orphan"})
    assert state.counts == {("a", "g", 0): 1} and state.instants == {}


def test_retain_counters_keeps_the_named_sliding_counters() -> None:
    state = InMemoryLimitState()
    state.add([limits.SlidingKey(c, "", BASE_US) for c in ("x", "y")])
    state.retain_counters(["x"])
    assert state.instants == {("x", ""): [BASE_US]}


def test_a_sliding_counter_listed_twice_is_one_counter_and_the_next_limits_still_count() -> None:
    s = {"counter": "s", "window": "minute", "max": 3, "sliding": True}
    c = {"counter": "c", "window": "minute", "max": 3}
    policy = compile_document(
        {"version": "1", "all_tools": {"limits": [s, c]}, "tools": {"t": {"limits": [s]}}}
    )
    d = decide(policy, Request("t", {}), InMemoryLimitState(), BASE_US / 1e6)
    assert [k[0] for k in d.reserved] == ["s", "c"]
