"""The gate: what the proxy does for one ``tools/call``, independent of the transport.

It turns a call into an engine :class:`~enforcer.engine.Request`, asks a checker for a
decision (the engine in process, or the gRPC enforcer under a deadline), opens the
call's span, and after the server answered closes the span and reports the outcome
so that a failed call gives its quota back.

Promises:

* A call is forwarded only when the decision is ``allow``. When the remote enforcer is
  unreachable or slower than the deadline the call is denied (fail closed) unless the
  gate was built with ``fail_open=True``; then it goes through and its span carries
  ``callward.failure_mode = true``.
* Telemetry never blocks or breaks enforcement (the recorder catches its own errors).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.to_thread

from callward.enforcer.engine import (
    ALLOW,
    DENY,
    REQUIRE_APPROVAL,
    Decision,
    Request,
    decide,
    visible_tools,
)
from callward.enforcer.limits import InMemoryLimitState, release
from callward.enforcer.policy import CompiledPolicy
from callward.enforcer.telemetry import CallRecorder, CallSpan

log = logging.getLogger("callward.proxy")

DEFAULT_ENFORCER_TIMEOUT = 0.2
"""Seconds the remote enforcer gets to decide before the gate fails closed (or open)."""

ENFORCER_UNAVAILABLE = "enforcer_unavailable"


class CheckerUnavailable(Exception):
    """The decision could not be obtained (enforcer down, too slow, or broken)."""


class Checker(Protocol):
    """Where decisions come from. ``report`` gives quota back on an ``error`` outcome."""

    async def check(self, req: Request, traceparent: str, mcp_session_id: str = "") -> Decision: ...

    async def report(
        self,
        req: Request,
        decision: Decision,
        outcome: str,
        duration_ms: float,
        result_bytes: int,
        error_type: str,
    ) -> None: ...


class InProcessChecker:
    """The engine in this process with in-memory counters.

    The relay runs on one event loop and :func:`decide` never awaits, so decide+reserve
    is atomic without a lock.
    """

    def __init__(self, policy: CompiledPolicy, clock: Callable[[], float] = time.time):
        self.policy = policy
        self.state = InMemoryLimitState()
        self.clock = clock

    async def check(self, req: Request, traceparent: str, mcp_session_id: str = "") -> Decision:
        return decide(self.policy, req, self.state, self.clock())

    async def report(
        self,
        req: Request,
        decision: Decision,
        outcome: str,
        duration_ms: float,
        result_bytes: int,
        error_type: str,
    ) -> None:
        if outcome == "error" and decision.reserved:
            release(self.state, decision.reserved)


class RemoteChecker:
    """The gRPC enforcer (``callward enforcer``) through :class:`enforcer.client.EnforcerClient`.

    The client is blocking, so calls run in a worker thread that is abandoned when the
    deadline passes: a hung enforcer costs the call at most ``timeout`` (plus a little
    slack for the thread hop), never the event loop. ``token`` is the bearer token for an
    enforcer started with ``--tokens``; that enforcer charges the token's grant.
    """

    def __init__(
        self,
        target: str,
        timeout: float = DEFAULT_ENFORCER_TIMEOUT,
        client: Any = None,
        token: str = "",
    ):
        if client is None:
            from callward.enforcer.client import EnforcerClient

            client = EnforcerClient(target, token=token)
        self.client = client
        self.target = target
        self.timeout = timeout

    async def check(self, req: Request, traceparent: str, mcp_session_id: str = "") -> Decision:
        def call() -> Decision:
            result: Decision = self.client.check(
                req, traceparent=traceparent, timeout=self.timeout, mcp_session_id=mcp_session_id
            )
            return result

        try:
            with anyio.fail_after(self.timeout + 0.05):
                return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        except TimeoutError:
            raise CheckerUnavailable(
                f"enforcer at {self.target} did not answer within {self.timeout * 1000:.0f} ms"
            ) from None
        except Exception as e:
            from callward.enforcer.client import EnforcerRejected

            if isinstance(e, EnforcerRejected):
                # The enforcer answered that the request is wrong: a denial, not an
                # outage, so --fail-open must not let it through.
                return Decision(DENY, "", f"enforcer refused the call: {_short(e)}", "")
            raise CheckerUnavailable(f"enforcer at {self.target} unavailable: {_short(e)}") from e

    async def report(
        self,
        req: Request,
        decision: Decision,
        outcome: str,
        duration_ms: float,
        result_bytes: int,
        error_type: str,
    ) -> None:
        def call() -> None:
            self.client.report(req.call_id, outcome, duration_ms, result_bytes, error_type)

        try:
            with anyio.fail_after(max(self.timeout, 1.0)):
                await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        except Exception as e:  # a lost report costs a quota unit, never the call
            log.warning("could not report call %s to the enforcer: %s", req.call_id, _short(e))


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: grant (token or ``--grant``), agent (clientInfo or header), session."""

    grant: str = ""
    agent_id: str = ""
    session_id: str = ""
    mcp_session_id: str = ""


@dataclass(slots=True)
class Verdict:
    """The gate's answer for one call, carried until the server has answered."""

    request: Request
    decision: Decision
    span: CallSpan | None
    failure_mode: bool
    started: float

    @property
    def forward(self) -> bool:
        return self.decision.decision == ALLOW


class Gate:
    """Decide, record and report tool calls for one proxy (shared by all its sessions)."""

    def __init__(
        self,
        checker: Checker,
        *,
        policy: CompiledPolicy | None = None,
        recorder: CallRecorder | None = None,
        server: str = "",
        fail_open: bool = False,
    ):
        self.checker = checker
        self.policy = policy
        self.recorder = recorder
        self.server = server
        self.fail_open = fail_open

    async def check(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        identity: Identity,
        traceparent: str = "",
    ) -> Verdict:
        """Decide one call and open its span."""
        req = Request(
            tool=tool,
            arguments=arguments,
            server=self.server,
            grant=identity.grant,
            agent_id=identity.agent_id,
            session_id=identity.session_id,
            call_id=uuid.uuid4().hex,
        )
        started = time.perf_counter()
        failure_mode = False
        try:
            decision = await self.checker.check(req, traceparent, identity.mcp_session_id)
        except CheckerUnavailable as e:
            version = self.policy.version if self.policy is not None else ""
            if self.fail_open:
                log.warning("%s; failing open for %s", e, tool)
                decision = Decision(ALLOW, "", f"{e} (failed open)", version)
                failure_mode = True
            else:
                decision = Decision(DENY, "", f"{e}; the call was denied (fail closed)", version)
                failure_mode = True
        span = None
        if self.recorder is not None:
            span = self.recorder.begin(
                req,
                decision,
                traceparent=traceparent,
                mcp_session_id=identity.mcp_session_id,
                failure_mode=failure_mode,
            )
        verdict = Verdict(req, decision, span, failure_mode, started)
        if not verdict.forward and verdict.span is not None:
            verdict.span.end(outcome="", duration_ms=self._elapsed(verdict))
        return verdict

    def finish(
        self, verdict: Verdict, outcome: str, result_bytes: int, error_type: str = ""
    ) -> float:
        """Close the span of a forwarded call; returns its duration in ms."""
        duration = self._elapsed(verdict)
        if verdict.span is not None:
            verdict.span.end(
                outcome=outcome,
                duration_ms=duration,
                result_bytes=result_bytes,
                error_type=error_type,
            )
        return duration

    async def report(
        self,
        verdict: Verdict,
        outcome: str,
        duration_ms: float,
        result_bytes: int,
        error_type: str = "",
    ) -> None:
        """Tell the checker how the call ended (an ``error`` gives the quota back)."""
        if verdict.failure_mode:
            return  # the enforcer never reserved anything for a call it did not decide
        await self.checker.report(
            verdict.request, verdict.decision, outcome, duration_ms, result_bytes, error_type
        )

    def record_rejected(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        identity: Identity,
        error_type: str,
        message: str,
        traceparent: str = "",
    ) -> None:
        """A span for a ``tools/call`` too malformed to be decided (no decision, an error)."""
        if self.recorder is None:
            return
        req = Request(
            tool=tool,
            arguments=arguments,
            server=self.server,
            grant=identity.grant,
            agent_id=identity.agent_id,
            session_id=identity.session_id,
            call_id=uuid.uuid4().hex,
        )
        version = self.policy.version if self.policy is not None else ""
        span = self.recorder.begin(
            req,
            Decision("", "", message, version),
            traceparent=traceparent,
            mcp_session_id=identity.mcp_session_id,
        )
        if span is not None:
            span.end(outcome="", error_type=error_type)

    def visible(self, tools: Iterable[Any]) -> list[Any]:
        """The tool entries of a ``tools/list`` result that the policy does not hide."""
        entries = [t for t in tools if isinstance(t, Mapping) and isinstance(t.get("name"), str)]
        if self.policy is None:
            return entries
        shown = set(visible_tools(self.policy, self.server, [t["name"] for t in entries]))
        return [t for t in entries if t["name"] in shown]

    @staticmethod
    def _elapsed(verdict: Verdict) -> float:
        return (time.perf_counter() - verdict.started) * 1000.0


def refusal_result(verdict: Verdict) -> dict[str, Any]:
    """The ``CallToolResult`` a refused call gets instead of reaching the server.

    ``structuredContent`` lets software tell a policy refusal from a tool failure.
    """
    d = verdict.decision
    if d.decision == REQUIRE_APPROVAL:
        text = f"[APPROVAL REQUIRED] {d.message or 'this call requires human approval'}"
    else:
        text = f"[POLICY DENIED] {d.message or 'denied by policy'}"
    structured: dict[str, Any] = {
        "decision": d.decision,
        "rule": d.rule,
        "policy_version": d.policy_version,
    }
    if verdict.failure_mode:
        structured["failure"] = ENFORCER_UNAVAILABLE
    return {
        "content": [{"type": "text", "text": text}],
        "structuredContent": structured,
        "isError": True,
    }


__all__ = [
    "DEFAULT_ENFORCER_TIMEOUT",
    "Checker",
    "CheckerUnavailable",
    "Gate",
    "Identity",
    "InProcessChecker",
    "RemoteChecker",
    "Verdict",
    "refusal_result",
]
