"""The enforcer's service core: decide, reserve, hold pending calls, swap policies.

Transport-free: it takes an engine :class:`Request` that has already been decoded and
validated, and returns the engine's :class:`Decision`; :mod:`callward.enforcer.messages`
translates protobuf messages and :mod:`callward.enforcer.server` serves them over gRPC.

What it promises:

- The enforcer's own clock (injected, epoch seconds) decides which rate-limit window a call
  falls in; no time sent by a caller is used. ``decide`` and the reservation of quota
  happen under one lock, so two concurrent calls can never both take the last unit of a
  limit.
- An allowed call stays *pending* (reserved counter keys, open span, start time) until its
  Report or until it expires. Report with outcome ``error`` gives the quota back; a pending
  call that expires or is evicted keeps its quota (it presumably ran).
- A retried call with a ``call_id`` that is still pending gets the first decision again
  without reserving a second time, so a gateway may retry after a lost response; the same
  ``call_id`` with a different request is a :class:`CallIdConflict`.
- With authentication on, a pending call belongs to the caller (``owner``) whose Check
  made it: a Report or a retried Check from anyone else is :class:`NotYourCall`, and the
  call, its quota and its span are left as they were.
- Telemetry never fails a call: span failures are counted and logged once.

All rate-limit handling sits in four small methods (``_decide_and_reserve``, ``_release``,
``_carry_over_limits``, ``_prune_windows``), the only places that touch the counters; the
rules they apply (windows, reserve, release, what a reload keeps) are
:mod:`callward.enforcer.limits`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from callward.enforcer import limits
from callward.enforcer.engine import ALLOW, Decision, Request, decide
from callward.enforcer.limits import CounterKey, InMemoryLimitState
from callward.enforcer.policy import CompiledPolicy
from callward.enforcer.server_config import EnforcerConfig, validate_server_config
from callward.enforcer.telemetry import CallRecorder, CallSpan

log = logging.getLogger("callward.enforcer")

OUTCOMES = ("ok", "error")

_urandom = os.urandom


def new_call_id() -> str:
    """A fresh call id: 128 random bits in hex.

    Random rather than a counter so that a caller cannot guess another caller's pending
    call and Report it; ``os.urandom(16).hex()`` costs a fraction of ``uuid.uuid4().hex``.
    """
    return _urandom(16).hex()


# --------------------------------------------------------------------------- errors


class RequestRejected(Exception):
    """A request the enforcer refuses; its class says which status the caller gets."""


class InvalidRequest(RequestRejected):
    """Malformed, oversize or incomplete request."""


class UnknownCall(RequestRejected):
    """Report for a call_id the enforcer does not hold (denied, reported, expired, restarted)."""


class CallIdConflict(RequestRejected):
    """A pending call_id reused for a different request."""


class NotYourCall(RequestRejected):
    """A Report (or retried Check) for a pending call that another caller made."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class PolicySwap:
    """What a reload changed: counters kept (unchanged limits) and counters reset."""

    old_version: str
    new_version: str
    kept: tuple[str, ...]
    reset: tuple[str, ...]


@dataclass(frozen=True)
class Housekeeping:
    """What one housekeeping pass dropped."""

    expired_calls: int
    pruned_counters: int


SpanResult = tuple[str, float | None, int | None, str]
"""(outcome, duration_ms, result_bytes, error_type) as :meth:`CallSpan.end` takes them."""
_NO_OUTCOME: SpanResult = ("", None, None, "")


class _Pending:
    """An allowed call waiting for its Report."""

    __slots__ = ("decision", "expires_at", "fingerprint", "owner", "reserved", "result", "span")

    def __init__(
        self, decision: Decision, fingerprint: Hashable, expires_at: float, owner: str
    ) -> None:
        self.decision = decision
        self.reserved: tuple[CounterKey, ...] = decision.reserved
        self.fingerprint = fingerprint
        self.expires_at = expires_at
        self.owner = owner
        self.span: CallSpan | None = None
        # Set when the call is closed before its span was attached (see _attach_span).
        self.result: SpanResult | None = None


# --------------------------------------------------------------------------- the core


class EnforcerCore:
    """Check and Report over a policy and in-memory counters, independent of any transport.

    ``clock`` is the enforcer's own clock (epoch seconds); it is injectable so that tests
    can cross a window boundary or expire a call, and is never taken from a request.
    """

    def __init__(
        self,
        policy: CompiledPolicy,
        *,
        config: EnforcerConfig | None = None,
        recorder: CallRecorder | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = validate_server_config(config or EnforcerConfig())
        self.recorder = recorder
        self.clock = clock
        self.state = InMemoryLimitState()
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._policy = policy
        self._windows = limits.window_lengths(policy)
        self._ttl = self.config.pending_ttl_s
        self._max_pending = self.config.max_pending
        self.telemetry_errors = 0
        self._telemetry_logged = False
        self._publish(policy)

    @property
    def policy(self) -> CompiledPolicy:
        return self._policy

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    # ----------------------------------------------------------------- check

    def check_call(
        self,
        req: Request,
        fingerprint: Hashable,
        traceparent: str = "",
        mcp_session_id: str = "",
        owner: str = "",
    ) -> Decision:
        """Decide ``req`` (whose ``call_id`` must be set) and hold it pending if allowed.

        ``fingerprint`` identifies the request's content: a retry with the same call_id
        and fingerprint gets the pending decision again, a different one is a conflict.
        ``owner`` is the authenticated caller ("" when authentication is off): only it may
        Report the call or retry it.
        """
        call_id = req.call_id
        recorder = self.recorder
        start_ns = time.time_ns() if recorder is not None else 0
        entry: _Pending | None = None
        evicted: list[_Pending] | None = None
        with self._lock:
            pending = self._pending.get(call_id)
            if pending is not None:
                if pending.owner != owner:
                    raise NotYourCall(f"call_id {call_id[:64]!r} is pending for another caller")
                if pending.fingerprint != fingerprint:
                    raise CallIdConflict(
                        f"call_id {call_id[:64]!r} is pending with a different request"
                    )
                return pending.decision
            now = self.clock()
            decision = self._decide_and_reserve(req, now)
            if decision[0] == ALLOW:  # Decision.allowed, without the property call
                entry = _Pending(decision, fingerprint, now + self._ttl, owner)
                self._pending[call_id] = entry
                if len(self._pending) > self._max_pending:
                    evicted = self._evict_oldest()
        if recorder is not None:
            span = self._begin(recorder, req, decision, traceparent, mcp_session_id, start_ns)
            if entry is None:
                if span is not None:
                    span.end()
            else:
                self._attach_span(entry, span)
        if evicted:
            for old in evicted:
                self._close_unreported(old, "evicted")
        return decision

    def _evict_oldest(self) -> list[_Pending]:
        # Called with the lock held.
        evicted = []
        while len(self._pending) > self._max_pending:
            evicted.append(self._pending.popitem(last=False)[1])
        return evicted

    # ----------------------------------------------------------------- report

    def report_call(
        self,
        call_id: str,
        outcome: str,
        duration_ms: float | None = None,
        result_bytes: int | None = None,
        error_type: str = "",
        owner: str = "",
    ) -> int:
        """Close a pending call; ``outcome`` ``error`` releases its quota. Returns the number
        of counter units released. Raises :class:`UnknownCall` if ``call_id`` is not pending
        and :class:`NotYourCall` (leaving the call pending) if ``owner`` did not make it.
        """
        result: SpanResult = (outcome, duration_ms, result_bytes, error_type)
        released = 0
        with self._lock:
            entry = self._pending.get(call_id)
            if entry is None:
                raise UnknownCall(
                    f"no pending call {call_id[:64]!r}: it was denied, already reported, "
                    f"pending longer than {self._ttl:g} s, or the enforcer restarted"
                )
            if entry.owner != owner:
                raise NotYourCall(f"call_id {call_id[:64]!r} was checked by another caller")
            del self._pending[call_id]
            if outcome == "error" and entry.reserved:
                released = self._release(entry.reserved)
            span = entry.span
            if span is None:
                entry.result = result
        if span is not None:
            span.end(*result)
        return released

    # ----------------------------------------------------------------- reload

    def swap_policy(self, new: CompiledPolicy) -> PolicySwap:
        """Put ``new`` in force; counters of limits whose settings did not change survive."""
        with self._lock:
            old = self._policy
            kept, reset = self._carry_over_limits(old, new)
            self._policy = new
            self._windows = limits.window_lengths(new)
        self._publish(new)
        return PolicySwap(old.version, new.version, kept, reset)

    # ----------------------------------------------------------------- upkeep

    def housekeeping(self) -> Housekeeping:
        """Close pending calls past their expiry and drop counters of ended windows."""
        expired: list[_Pending] = []
        with self._lock:
            now = self.clock()
            pending = self._pending
            # Entries are in insertion order and share one TTL, so expiry is ordered too.
            while pending:
                call_id, entry = next(iter(pending.items()))
                if entry.expires_at > now:
                    break
                expired.append(pending.pop(call_id))
            pruned = self._prune_windows(now)
        for entry in expired:
            self._close_unreported(entry, "expired")
        return Housekeeping(len(expired), pruned)

    def close(self) -> None:
        """Close every pending call's span (no outcome known) so it is still exported."""
        with self._lock:
            entries = list(self._pending.values())
            self._pending.clear()
        for entry in entries:
            self._close_unreported(entry, "shutdown")

    # ----------------------------------------------------------------- limits
    # The only code that touches counters; every method runs with the lock held.

    def _decide_and_reserve(self, req: Request, now: float) -> Decision:
        # The engine reserves an allowed call's counter keys in ``state`` as it decides.
        return decide(self._policy, req, self.state, now)

    def _release(self, reserved: tuple[CounterKey, ...]) -> int:
        return limits.release(self.state, reserved)

    def _carry_over_limits(
        self, old: CompiledPolicy, new: CompiledPolicy
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Keep the counters of limits unchanged by a reload; returns (kept, reset) names."""
        kept, reset = limits.carry_over(self.state, old, new)
        # A reset counter must not be decremented later by a call reserved before.
        for entry in self._pending.values():
            if entry.reserved:
                entry.reserved = limits.surviving_keys(entry.reserved, kept)
        return tuple(sorted(kept)), tuple(sorted(reset))

    def _prune_windows(self, now: float) -> int:
        return self.state.prune(now, self._windows)

    # ----------------------------------------------------------------- telemetry

    def _begin(
        self,
        recorder: CallRecorder,
        req: Request,
        decision: Decision,
        traceparent: str,
        mcp_session_id: str,
        start_ns: int,
    ) -> CallSpan | None:
        try:
            return recorder.begin(
                req,
                decision,
                traceparent=traceparent,
                mcp_session_id=mcp_session_id,
                start_time_ns=start_ns,
            )
        except Exception as e:
            self._telemetry_failed(e)
            return None

    def _attach_span(self, entry: _Pending, span: CallSpan | None) -> None:
        # A Report (or expiry) may overtake us between the decision and this point.
        with self._lock:
            entry.span = span
            result = entry.result
        if result is not None and span is not None:
            span.end(*result)

    def _close_unreported(self, entry: _Pending, why: str) -> None:
        with self._lock:
            span = entry.span
            if span is None:
                entry.result = _NO_OUTCOME
                return
        try:
            span.span.set_attribute("callward.pending_closed", why)
        except Exception as e:
            self._telemetry_failed(e)
        span.end()

    def _publish(self, policy: CompiledPolicy) -> None:
        if self.recorder is None:
            return
        try:
            self.recorder.publish_policy(policy.version, policy.canonical, policy.source)
        except Exception as e:
            self._telemetry_failed(e)

    def _telemetry_failed(self, error: Exception) -> None:
        self.telemetry_errors += 1
        if not self._telemetry_logged:
            self._telemetry_logged = True
            log.warning("telemetry failed (decisions are unaffected; counted): %r", error)


__all__ = [
    "OUTCOMES",
    "CallIdConflict",
    "EnforcerCore",
    "Housekeeping",
    "InvalidRequest",
    "NotYourCall",
    "PolicySwap",
    "RequestRejected",
    "UnknownCall",
    "new_call_id",
]
