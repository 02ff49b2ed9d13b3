"""Rate limits, written once: windows, counter keys, reserve, release, and reload.

Public names: :func:`window_start`, :func:`window_starts`, :func:`window_numbers`,
:func:`instant_us`, :func:`scope_key`, :func:`counter_key`, :class:`LimitState`,
:class:`InMemoryLimitState`, :func:`reserve`, :func:`release`, :func:`surviving_counters`,
:func:`carry_over`, :func:`surviving_keys`, :func:`window_lengths`, ``SCOPE_KEY``,
``CounterKey`` and :class:`SlidingKey`.

Every place that counts calls against a limit goes through this module: the engine's
``decide``, the gRPC service core, the in-process proxy gate, ``policy test`` and the
batch entry point that replay and the dataset generator use. docs/policy.md states the
contract these functions implement:

- a window starts at ``int(now // length) * length`` in Unix seconds (calendar windows
  in UTC);
- a counter is keyed by (counter name, scope key, window start);
- a *sliding* limit (``"sliding": true``) instead counts the calls it allowed in the
  last ``length`` seconds before the call, ``(t - length, t]`` in whole microseconds
  (:func:`instant_us`); each allowed call is one :class:`SlidingKey`, (counter name,
  scope key, the call's instant), so no two windows meet at a boundary a burst can
  straddle;
- a call is checked against every applicable limit, and only when all have room is one
  unit of each reserved, in one step against the state;
- a failed call gives back exactly the keys it reserved, in the windows they were
  reserved in;
- a reload keeps the counters whose (window, max, scope, sliding) did not change and
  resets the others.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping
from operator import attrgetter
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from callward.enforcer.policy import CompiledPolicy, Limit
from callward.enforcer.policy_model import WINDOWS

if TYPE_CHECKING:
    import numpy as np

    from callward.enforcer.engine import Request

CounterKey = tuple[str, str, int]
"""(counter, scope key, window start in epoch seconds, UTC-aligned), or a
:class:`SlidingKey`."""


class SlidingKey(NamedTuple):
    """One call a sliding limit allowed: its counter, scope key and instant (epoch
    microseconds). A tuple like a calendar key (``key[0]`` is the counter everywhere),
    told apart by its type; two calls at the same microsecond are two equal keys, and the
    state counts both."""

    counter: str
    scope: str
    at_us: int


def instant_us(now: float) -> int:
    """``now`` (epoch seconds) in whole microseconds, the clock sliding limits use.

    Rounded, not floored: a recorded start time ``start_us`` reaches the engine as
    ``start_us / 1_000_000`` and comes back exactly (the error of the two roundings is
    under half a microsecond for any time a double holds to the microsecond).
    """
    return round(now * 1_000_000)


# --------------------------------------------------------------------------- windows


def window_start(now: float, window_seconds: int) -> int:
    """The start (epoch seconds) of the window of length ``window_seconds`` holding ``now``.

    Floor division on the float ``now``, as the contract says: a call one microsecond
    before a boundary is in the earlier window, a call exactly on it in the later one.
    """
    return int(now // window_seconds) * window_seconds


def window_numbers(starts_us: np.ndarray, window_seconds: Any, exact_int: bool) -> np.ndarray:
    """``int(now // w)`` over an array of call start times in integer microseconds: the
    window number, which :func:`window_starts` multiplies by the length.

    Equal to ``window_start(start_us / 1_000_000, w) // w`` row by row: numpy's float floor
    division follows Python's, and int64 microseconds up to 2**53 convert to float
    exactly, as ``start_us / 1_000_000`` does in Python. ``exact_int`` says every time is
    close enough to the epoch (the batch uses 2**32 s) that the rounding of
    ``start_us / 1e6`` (under a microsecond) never crosses a whole second, so integer
    division gives the same result, faster.
    """
    import numpy as np  # only the batch needs it; the engine's import stays light

    if exact_int:
        return starts_us // (np.asarray(window_seconds) * 1_000_000)
    now = starts_us / 1_000_000
    return np.floor_divide(now, window_seconds).astype(np.int64)


def window_starts(starts_us: np.ndarray, window_seconds: Any, exact_int: bool) -> np.ndarray:
    """:func:`window_start` over an array of call start times in integer microseconds
    (see :func:`window_numbers` for when ``exact_int`` may be set)."""
    return window_numbers(starts_us, window_seconds, exact_int) * window_seconds


# --------------------------------------------------------------------------- keys


def _tool_scope(req: Request) -> str:
    return f"{req.server}/{req.tool}" if req.server else req.tool


def _global_scope(req: Request) -> str:
    return ""


SCOPE_KEY: Mapping[str, Callable[[Request], str]] = {
    "grant": attrgetter("grant"),
    "agent": attrgetter("agent_id"),
    "session": attrgetter("session_id"),
    "tool": _tool_scope,
    "global": _global_scope,
}
"""Scope name -> the request's scope key for it."""


def scope_key(limit: Limit, req: Request) -> str:
    """The scope key of ``req`` under ``limit``: grant, agent, session, server/tool or ''."""
    return SCOPE_KEY.get(limit.scope, _global_scope)(req)


def counter_key(limit: Limit, req: Request, now: float) -> CounterKey:
    """The counter ``req`` fills under ``limit`` at ``now``."""
    if limit.sliding:
        return SlidingKey(limit.counter, scope_key(limit, req), instant_us(now))
    return (limit.counter, scope_key(limit, req), window_start(now, limit.window_seconds))


# --------------------------------------------------------------------------- state


class LimitState(Protocol):
    """Counters of allowed calls, keyed by (counter, scope key, window start), and the
    instants of the calls sliding limits allowed."""

    def count(self, key: CounterKey) -> int: ...

    def count_since(self, key: SlidingKey, length_us: int) -> int:
        """Calls held for ``key``'s counter and scope after ``key.at_us - length_us``."""
        ...

    def add(self, keys: Iterable[CounterKey]) -> None: ...

    def release(self, keys: Iterable[CounterKey]) -> None: ...


_LONGEST_WINDOW = max(WINDOWS.values())


class InMemoryLimitState:
    """A dict of counters, and per (counter, scope key) of a sliding limit the sorted
    instants of the calls it holds (at most ``max`` within any window, so its memory is
    bounded by the limit, not by the traffic). Not thread-safe: callers serialise
    decide+add (the server holds a lock)."""

    __slots__ = ("counts", "instants")

    def __init__(self) -> None:
        self.counts: dict[CounterKey, int] = {}
        self.instants: dict[tuple[str, str], list[int]] = {}

    def count(self, key: CounterKey) -> int:
        return self.counts.get(key, 0)

    def count_since(self, key: SlidingKey, length_us: int) -> int:
        # Calls later than ``key`` count too: under a clock that stepped back they are
        # still the last calls, and in time order (replay) there are none.
        held = self.instants.get((key[0], key[1]))
        if not held:
            return 0
        return len(held) - bisect.bisect_right(held, key[2] - length_us)

    def add(self, keys: Iterable[CounterKey]) -> None:
        c = self.counts
        for k in keys:
            if type(k) is SlidingKey:
                held = self.instants.setdefault((k[0], k[1]), [])
                if not held or held[-1] <= k[2]:
                    held.append(k[2])
                else:
                    bisect.insort(held, k[2])
            else:
                c[k] = c.get(k, 0) + 1

    def release(self, keys: Iterable[CounterKey]) -> None:
        c = self.counts
        for k in keys:
            if type(k) is SlidingKey:
                held = self.instants.get((k[0], k[1]))
                if held:
                    i = bisect.bisect_left(held, k[2])
                    if i < len(held) and held[i] == k[2]:
                        del held[i]
                    if not held:
                        del self.instants[(k[0], k[1])]
                continue
            n = c.get(k, 0) - 1
            if n > 0:
                c[k] = n
            else:
                c.pop(k, None)

    def prune(self, now: float, keep_counters: Mapping[str, int] | None = None) -> int:
        """Drop counters whose window ended before ``now``, and the instants of sliding
        limits no call at ``now`` or later can see; returns how many were dropped.

        ``keep_counters`` maps counter name -> window length; unknown counters are dropped.
        Without it every counter is kept as long as the longest window (a day) needs it.
        """
        dead = []
        for key in self.counts:
            length = keep_counters.get(key[0]) if keep_counters is not None else _LONGEST_WINDOW
            if length is None or key[2] + length <= now:
                dead.append(key)
        for key in dead:
            del self.counts[key]
        dropped = len(dead)
        at = instant_us(now)
        for name in list(self.instants):
            length = keep_counters.get(name[0]) if keep_counters is not None else _LONGEST_WINDOW
            held = self.instants[name]
            cut = (
                len(held) if length is None else bisect.bisect_right(held, at - length * 1_000_000)
            )
            if cut:
                del held[:cut]
                dropped += cut
            if not held:
                del self.instants[name]
        return dropped

    def retain_counters(self, names: Iterable[str]) -> None:
        """Keep only the counters named (a reload keeps the counters of unchanged limits)."""
        keep = set(names)
        for key in [k for k in self.counts if k[0] not in keep]:
            del self.counts[key]
        for name in [n for n in self.instants if n[0] not in keep]:
            del self.instants[name]


# --------------------------------------------------------------------------- reserve, release


def reserve(
    limits: Iterable[Limit], req: Request, state: LimitState, now: float
) -> Limit | tuple[CounterKey, ...]:
    """Check ``req`` against every limit, in order; reserve one unit of each only if all have room.

    Returns the first full limit (nothing reserved) or the keys reserved. A counter listed
    twice (a tool's limit and an ``all_tools`` one with the same name) is one counter: it is
    checked and filled once. Atomic with respect to ``state`` as long as the caller
    serialises calls on it (nothing here yields).
    """
    keys: list[CounterKey] = []
    scope_of = SCOPE_KEY.get
    count = state.count
    for lim in limits:
        w = lim.window_seconds
        key: CounterKey
        if lim.sliding:
            key = SlidingKey(lim.counter, scope_of(lim.scope, _global_scope)(req), instant_us(now))
            if key in keys:
                continue
            if state.count_since(key, w * 1_000_000) >= lim.max:
                return lim
            keys.append(key)
            continue
        # counter_key(), inlined: this runs for every limit of every allowed call.
        key = (lim.counter, scope_of(lim.scope, _global_scope)(req), int(now // w) * w)
        if key in keys:
            continue
        if count(key) >= lim.max:
            return lim
        keys.append(key)
    reserved = tuple(keys)
    state.add(reserved)
    return reserved


def release(state: LimitState, keys: Iterable[CounterKey]) -> int:
    """Give back the units a failed call reserved (its own keys, so its own windows).

    Returns how many units were given back.
    """
    keys = tuple(keys)
    state.release(keys)
    return len(keys)


# --------------------------------------------------------------------------- reload


def surviving_counters(old: CompiledPolicy, new: CompiledPolicy) -> set[str]:
    """The counters a reload from ``old`` to ``new`` keeps: those in ``new`` whose
    (window, max, scope, sliding) is the same in ``old``. Every other counter starts from zero."""
    old_sigs, new_sigs = old.limit_signatures(), new.limit_signatures()
    return {c for c, sig in new_sigs.items() if old_sigs.get(c) == sig}


def carry_over(
    state: InMemoryLimitState, old: CompiledPolicy, new: CompiledPolicy
) -> tuple[set[str], set[str]]:
    """Apply a reload to ``state``: drop the counters that do not survive.

    Returns (kept, reset): the surviving counter names, and the names of ``old``'s counters
    and of counters held in ``state`` that were reset. A call reserved before the reload
    must then release only its keys of kept counters (see :func:`surviving_keys`).
    """
    kept = surviving_counters(old, new)
    held = {k[0] for k in state.counts} | {name[0] for name in state.instants}
    reset = (held | set(old.limit_signatures())) - kept
    state.retain_counters(kept)
    return kept, reset


def surviving_keys(keys: tuple[CounterKey, ...], kept: set[str]) -> tuple[CounterKey, ...]:
    """The keys of a call reserved before a reload that it may still release: a reset
    counter must not be decremented by a call counted before the reset."""
    return tuple(k for k in keys if k[0] in kept)


def window_lengths(policy: CompiledPolicy) -> dict[str, int]:
    """Counter name -> window length, for :meth:`InMemoryLimitState.prune`."""
    return {lim.counter: lim.window_seconds for lim in policy.all_limits()}


__all__ = [
    "SCOPE_KEY",
    "CounterKey",
    "InMemoryLimitState",
    "LimitState",
    "SlidingKey",
    "carry_over",
    "counter_key",
    "instant_us",
    "release",
    "reserve",
    "scope_key",
    "surviving_counters",
    "surviving_keys",
    "window_lengths",
    "window_numbers",
    "window_start",
    "window_starts",
]
