"""Rate limits, written once: windows, counter keys, reserve, release, and reload.

Public names: :func:`window_start`, :func:`window_starts`, :func:`window_numbers`,
:func:`scope_key`,
:func:`counter_key`, :class:`LimitState`, :class:`InMemoryLimitState`, :func:`reserve`,
:func:`release`, :func:`surviving_counters`, :func:`carry_over`, :func:`surviving_keys`,
:func:`window_lengths`, ``SCOPE_KEY`` and ``CounterKey``.

Every place that counts calls against a limit goes through this module: the engine's
``decide``, the gRPC service core, the in-process proxy gate, ``policy test`` and the
batch entry point that replay and the dataset generator use. docs/policy.md states the
contract these functions implement:

- a window starts at ``int(now // length) * length`` in Unix seconds (calendar windows
  in UTC);
- a counter is keyed by (counter name, scope key, window start);
- a call is checked against every applicable limit, and only when all have room is one
  unit of each reserved, in one step against the state;
- a failed call gives back exactly the keys it reserved, in the windows they were
  reserved in;
- a reload keeps the counters whose (window, max, scope) did not change and resets the
  others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Protocol

from callward.enforcer.policy import CompiledPolicy, Limit

if TYPE_CHECKING:
    import numpy as np

    from callward.enforcer.engine import Request

CounterKey = tuple[str, str, int]
"""(counter, scope key, window start in epoch seconds, UTC-aligned)."""


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
    return (limit.counter, scope_key(limit, req), window_start(now, limit.window_seconds))


# --------------------------------------------------------------------------- state


class LimitState(Protocol):
    """Counters of allowed calls, keyed by (counter, scope key, window start)."""

    def count(self, key: CounterKey) -> int: ...

    def add(self, keys: Iterable[CounterKey]) -> None: ...

    def release(self, keys: Iterable[CounterKey]) -> None: ...


class InMemoryLimitState:
    """A dict of counters. Not thread-safe: callers serialise decide+add (the server holds a lock)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[CounterKey, int] = {}

    def count(self, key: CounterKey) -> int:
        return self.counts.get(key, 0)

    def add(self, keys: Iterable[CounterKey]) -> None:
        c = self.counts
        for k in keys:
            c[k] = c.get(k, 0) + 1

    def release(self, keys: Iterable[CounterKey]) -> None:
        c = self.counts
        for k in keys:
            n = c.get(k, 0) - 1
            if n > 0:
                c[k] = n
            else:
                c.pop(k, None)

    def prune(self, now: float, keep_counters: Mapping[str, int] | None = None) -> int:
        """Drop counters whose window ended before ``now``; returns how many were dropped.

        ``keep_counters`` maps counter name -> window length; unknown counters are dropped.
        """
        dead = []
        for key in self.counts:
            length = keep_counters.get(key[0]) if keep_counters is not None else 86400
            if length is None or key[2] + length <= now:
                dead.append(key)
        for key in dead:
            del self.counts[key]
        return len(dead)

    def retain_counters(self, names: Iterable[str]) -> None:
        """Keep only the counters named (a reload keeps the counters of unchanged limits)."""
        keep = set(names)
        for key in [k for k in self.counts if k[0] not in keep]:
            del self.counts[key]


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
    (window, max, scope) is the same in ``old``. Every other counter starts from zero."""
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
    reset = ({k[0] for k in state.counts} | set(old.limit_signatures())) - kept
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
    "carry_over",
    "counter_key",
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
