"""The relay: one client session forwarded to one upstream connection, message by message.

Both sides are the SDK's transport streams of :class:`SessionMessage`, so the relay is
the same for stdio and streamable HTTP. It forwards every JSON-RPC message unchanged in
both directions, with three exceptions:

* a ``tools/call`` request goes through the :class:`~enforcer.proxy.gate.Gate` first; a
  refused call is answered here and never reaches the server;
* a ``resources/read``, ``prompts/get`` or ``completion/complete`` request, which reads
  or expands server content, is decided the same way, as the pseudo-tool
  :data:`PSEUDO_TOOLS` names for its method, with its params (without ``_meta``) as arguments (:func:`decided_call`); a
  refusal is a JSON-RPC error :data:`POLICY_REFUSED`;
* a ``tools/list`` response loses the tools the policy hides (every time, so a tool stays
  hidden after ``notifications/tools/list_changed``);
* failures are answered here: a malformed message, an upstream that closes or crashes
  mid-call, or one that does not answer within ``call_timeout``.

What the relay refuses with ``-32600`` and never forwards:

* a client message whose shape the spec does not allow (:mod:`enforcer.proxy.framing`,
  applied again here to what the transport parsed, so that a transport without a raw
  classifier still cannot slip a ``tools/call`` through as a notification);
* a request whose id is already in flight in the same direction (ids compare as text,
  as the SDK's HTTP transport routes answers by ``str(id)``), answered with ``id: null``
  because an answer carrying that id would be taken for the answer to the first request;
* a second ``initialize``: the first one fixes the session's identity (``clientInfo``
  name, and over HTTP the agent header and grant), and a later request claiming another
  agent or grant is refused; requests other than ``ping`` before ``initialize`` are
  refused too, so that no call is decided under an identity the session never declared.

Request ids are not rewritten. Client and server each own their id space and the proxy
never originates a request of its own, except one: after the upstream died, the next
client request reconnects and replays the client's ``initialize`` under a
``callward-reinit-N`` id whose answer is swallowed.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream, TaskGroup, TaskStatus
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp.types import (
    ErrorData,
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    RequestId,
)

from callward.enforcer.proxy.framing import Refusal, classify_document, usable_id
from callward.enforcer.proxy.framing import parse as parse_json
from callward.enforcer.proxy.gate import Gate, Identity, Verdict, refusal_result
from callward.enforcer.proxy.upstream import Connector

log = logging.getLogger("callward.proxy")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
UPSTREAM_UNAVAILABLE = -32001
"""The upstream server could not be reached, or it closed while the request was pending."""
UPSTREAM_TIMEOUT = -32002
"""The upstream server did not answer within the proxy's per-call timeout."""
MESSAGE_TOO_LARGE = -32003
"""A message over the proxy's size limit (see :mod:`enforcer.proxy.stdio`)."""
POLICY_REFUSED = -32010
"""A decided request other than ``tools/call`` that the policy refused; ``error.data``
holds ``{decision, rule, policy_version}`` as a refused call's ``structuredContent``."""

OVERSIZE_METHOD = "callward/oversize"
"""Stands in for a message too large to read; the relay answers it with an error."""
REFUSED_METHOD = "callward/refused"
"""Stands in for a message the transport's classifier refused; ``params`` carries the
error (``code``, ``message``) and the id to answer (or null)."""

PSEUDO_TOOLS = {
    "resources/read": "resources:read",
    "prompts/get": "prompts:get",
    "completion/complete": "completion:complete",
}
"""Methods other than ``tools/call`` that read or expand server content, and the name
under which the policy judges each. A colon, which MCP tool names never hold, keeps
them apart from real tools, and no ``/`` keeps them nameable in a policy (``/`` there
qualifies a tool by its server: ``github/resources:read``)."""
DECIDED_METHODS = frozenset({"tools/call", *PSEUDO_TOOLS})
"""Client requests that go through the gate: they run a tool or read or expand server
content, so a default-deny policy must be able to refuse them."""
PRE_INIT_METHODS = frozenset({"initialize", "ping"})

DEFAULT_CALL_TIMEOUT = 120.0
"""Seconds an upstream gets to answer one request before the client gets an error."""
MIN_INITIALIZE_TIMEOUT = 60.0
"""``initialize`` gets at least this long: a server's first start (npx, uvx) can be slow."""

IdentityResolver = Callable[[SessionMessage, str], Identity]
"""(message as received, clientInfo.name seen at initialize) -> who is calling."""

NOISE_BURST_GAP = 1.0
"""Seconds of quiet that end a burst of non-JSON-RPC lines on an upstream's stdout: each
burst gets one warning, the lines in it are counted, not logged one by one."""

MalformedHook = Callable[[Exception], str | None]
"""Given the transport's parse exception, the raw text that failed (if the transport knows)."""


@dataclass(slots=True)
class Inflight:
    """A client request forwarded upstream and not answered yet."""

    method: str
    deadline: float
    timeout: float
    verdict: Verdict | None = None
    progress_token: Any = None


@dataclass(slots=True)
class RelayStats:
    forwarded: int = 0
    refused: int = 0
    upstream_connects: int = 0
    dropped_late_responses: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class Relay:
    """Forward one client session to its upstream, enforcing policy on ``tools/call``."""

    _reinit_ids = itertools.count(1)

    def __init__(
        self,
        gate: Gate,
        connector: Connector,
        identify: IdentityResolver,
        *,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        on_malformed: MalformedHook | None = None,
    ):
        self.gate = gate
        self.connector = connector
        self.identify = identify
        self.call_timeout = call_timeout
        self.on_malformed = on_malformed
        self.stats = RelayStats()
        self.client_name = ""
        self._init: JSONRPCRequest | None = None
        self._pinned: Identity | None = None
        self._inflight: dict[RequestId, Inflight] = {}
        self._inflight_keys: set[str] = set()
        self._server_inflight: set[str] = set()
        self._progress: dict[Any, RequestId] = {}
        self._up_write: ObjectSendStream[SessionMessage] | None = None
        self._client_write: ObjectSendStream[SessionMessage] | None = None
        self._tg: TaskGroup | None = None
        self._noise_last = -NOISE_BURST_GAP
        self._connect_lock = anyio.Lock()
        self._reinit_id: str | None = None
        self._reinit_done: anyio.Event | None = None
        self._reinit_error: str = ""

    # ------------------------------------------------------------------ lifecycle

    async def run(
        self,
        client_read: ObjectReceiveStream[SessionMessage | Exception],
        client_write: ObjectSendStream[SessionMessage],
    ) -> None:
        """Relay until the client closes its side; the upstream is closed with it."""
        self._client_write = client_write
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._sweep)
                await self._connect()
                try:
                    async for item in client_read:
                        await self._from_client(item)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    pass
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self._client_write = None
            await client_write.aclose()

    async def _connect(self) -> str:
        """Open the upstream connection; returns "" or why it failed."""
        assert self._tg is not None
        try:
            await self._tg.start(self._upstream_task)
            self.stats.upstream_connects += 1
            return ""
        except Exception as e:
            log.warning("could not connect to the upstream server: %r", e)
            return f"upstream server could not be started: {type(e).__name__}: {e}"

    async def _upstream_task(self, *, task_status: TaskStatus[None]) -> None:
        started = False
        mine: ObjectSendStream[SessionMessage] | None = None
        try:
            async with self.connector() as (up_read, up_write):
                self._up_write = mine = up_write
                started = True
                task_status.started()
                async for item in up_read:
                    await self._from_upstream(item)
                log.warning("upstream server closed the connection")
                # Tell pending callers now, not after the SDK has waited for the server
                # process to exit.
                self._forget(mine)
                await self._fail_all("upstream server closed the connection")
        except Exception as e:
            if not started:
                raise
            log.warning("upstream connection failed: %r", e)
        finally:
            self._forget(mine)
            if started and self._inflight:
                # Shielded so pending callers hear about it even during shutdown, but
                # bounded: a client that stopped reading must not hold the proxy open.
                with anyio.CancelScope(shield=True, deadline=anyio.current_time() + 2.0):
                    await self._fail_all("upstream server closed the connection")

    def _forget(self, writer: ObjectSendStream[SessionMessage] | None) -> None:
        """Drop the upstream writer, unless a reconnect has already replaced it."""
        if writer is not None and self._up_write is writer:
            self._up_write = None

    async def _ensure_upstream(self, replay_initialize: bool) -> str:
        """Reconnect after the upstream died, replaying the client's ``initialize`` unless
        the request about to go is that ``initialize``; "" when ready."""
        async with self._connect_lock:
            if self._up_write is not None:
                return ""
            failure = await self._connect()
            if failure or self._init is None or not replay_initialize:
                return failure
            return await self._reinitialize(self._init)

    async def _reinitialize(self, init: JSONRPCRequest) -> str:
        rid = f"callward-reinit-{next(self._reinit_ids)}"
        self._reinit_id, self._reinit_done, self._reinit_error = rid, anyio.Event(), ""
        replay = init.model_copy(update={"id": rid})
        if not await self._send_up(JSONRPCMessage(replay)):
            return "upstream server closed during re-initialisation"
        with anyio.move_on_after(max(self.call_timeout, MIN_INITIALIZE_TIMEOUT)):
            await self._reinit_done.wait()
        done = self._reinit_done.is_set()
        self._reinit_id = None
        if not done:
            return "upstream server did not answer initialize after a restart"
        if self._reinit_error:
            return f"upstream server refused initialize after a restart: {self._reinit_error}"
        note = JSONRPCNotification(jsonrpc="2.0", method="notifications/initialized")
        await self._send_up(JSONRPCMessage(note))
        log.info("reconnected to the upstream server")
        return ""

    # ------------------------------------------------------------------ client -> upstream

    async def _from_client(self, item: SessionMessage | Exception) -> None:
        if isinstance(item, Exception):
            await self._answer_malformed(item)
            return
        root = item.message.root
        if isinstance(root, JSONRPCNotification) and root.method == REFUSED_METHOD:
            await self._answer_stand_in(root)
            return
        if (
            isinstance(root, JSONRPCRequest | JSONRPCNotification)
            and root.method == OVERSIZE_METHOD
        ):
            await self._answer_oversize(root)
            return
        refusal = classify_document(item.message.model_dump(by_alias=True, exclude_unset=True))
        if refusal is not None:
            await self._refuse(refusal)
            return
        if isinstance(root, JSONRPCRequest):
            await self._client_request(item, root)
        elif isinstance(root, JSONRPCNotification):
            if root.method == "notifications/cancelled":
                await self._client_cancelled(root)
            await self._send_up(item.message)
        else:  # the client's answer to a server->client request (sampling, roots, elicitation)
            key = str(root.id)
            if key not in self._server_inflight:
                self._count("unsolicited_response")
                log.warning("dropped a client answer to no pending server request")
                return
            self._server_inflight.discard(key)
            await self._send_up(item.message)

    async def _answer_oversize(self, root: JSONRPCRequest | JSONRPCNotification) -> None:
        self._count("oversize")
        if isinstance(root, JSONRPCNotification):
            return
        params = root.params or {}
        await self._error(
            root.id,
            MESSAGE_TOO_LARGE,
            f"message of {params.get('bytes', '?')} bytes is over the proxy's limit "
            f"of {params.get('limit', '?')} bytes",
        )

    async def _answer_stand_in(self, note: JSONRPCNotification) -> None:
        params = note.params or {}
        code = params.get("code")
        rid = params.get("id")
        await self._refuse(
            Refusal(
                code if isinstance(code, int) else INVALID_REQUEST,
                str(params.get("message", "invalid request")),
                rid if isinstance(rid, str | int) else None,
            )
        )

    async def _refuse(self, refusal: Refusal) -> None:
        """Answer a message that is not forwarded (-32700/-32600, id null when unusable)."""
        self._count("parse_error" if refusal.code == PARSE_ERROR else "invalid_request")
        log.warning("refused a message from the client: %s", refusal.reason)
        await self._error(refusal.id, refusal.code, refusal.reason)

    def _session_refusal(self, item: SessionMessage, req: JSONRPCRequest) -> Refusal | None:
        """Lifecycle and identity rules of one session (see the module docstring)."""
        key = str(req.id)
        if key in self._inflight_keys or (self._reinit_id is not None and key == self._reinit_id):
            return Refusal(
                INVALID_REQUEST, f"invalid request: id {key[:64]!r} is already in flight"
            )
        if req.method == "initialize":
            if self._init is not None:
                return Refusal(
                    INVALID_REQUEST,
                    "invalid request: this session is already initialized; "
                    "its identity is fixed by the first initialize",
                    req.id,
                )
            return None
        if self._pinned is None:
            if req.method in PRE_INIT_METHODS:
                return None
            return Refusal(
                INVALID_REQUEST, f"invalid request: {req.method} before initialize", req.id
            )
        now = self.identify(item, self.client_name)
        if (now.agent_id, now.grant) != (self._pinned.agent_id, self._pinned.grant):
            return Refusal(
                INVALID_REQUEST,
                "invalid request: this session's identity was fixed at initialize; "
                "a request claiming another agent is refused",
                req.id,
            )
        return None

    async def _client_request(self, item: SessionMessage, req: JSONRPCRequest) -> None:
        refusal = self._session_refusal(item, req)
        if refusal is not None:
            await self._refuse(refusal)
            return
        if req.method == "initialize":
            self._init = req
            info = (req.params or {}).get("clientInfo")
            if isinstance(info, dict) and isinstance(info.get("name"), str):
                self.client_name = info["name"]
            self._pinned = self.identify(item, self.client_name)
        verdict: Verdict | None = None
        if req.method in DECIDED_METHODS:
            checked = await self._check_call(item, req)
            if checked is None:
                return
            verdict = checked
        if self._up_write is None:
            failure = await self._ensure_upstream(replay_initialize=req.method != "initialize")
            if failure:
                await self._fail_request(
                    req.id, req.method, verdict, failure, "upstream_unavailable"
                )
                return
        timeout = self.call_timeout
        if req.method == "initialize":
            timeout = max(timeout, MIN_INITIALIZE_TIMEOUT)
        token = _progress_token(req.params)
        deadline = anyio.current_time() + timeout
        self._inflight[req.id] = Inflight(req.method, deadline, timeout, verdict, token)
        self._inflight_keys.add(str(req.id))
        if token is not None:
            self._progress[token] = req.id
        if not await self._send_up(item.message):
            self._pop(req.id)
            await self._fail_request(
                req.id,
                req.method,
                verdict,
                "upstream server closed the connection",
                "upstream_closed",
            )
            return
        self.stats.forwarded += 1

    async def _check_call(self, item: SessionMessage, req: JSONRPCRequest) -> Verdict | None:
        """Gate a decided request; None when it was answered here (refused or malformed)."""
        params = req.params or {}
        identity = self.identify(item, self.client_name)
        meta = params.get("_meta")
        traceparent = meta.get("traceparent", "") if isinstance(meta, dict) else ""
        traceparent = traceparent if isinstance(traceparent, str) else ""
        if req.method != "tools/call":
            return await self._check_read(req, identity, traceparent)
        name = params.get("name")
        arguments = params.get("arguments")
        arguments = {} if arguments is None else arguments
        problem = ""
        if not isinstance(name, str) or not name:
            problem = "tools/call needs a tool name in params.name"
        elif not isinstance(arguments, dict):
            problem = "tools/call params.arguments must be an object"
        if problem:
            self.gate.record_rejected(
                name if isinstance(name, str) else "",
                arguments if isinstance(arguments, dict) else {},
                identity,
                "invalid_params",
                problem,
                traceparent,
            )
            self._count("invalid_params")
            await self._error(req.id, INVALID_PARAMS, problem)
            return None
        assert isinstance(name, str) and isinstance(arguments, dict)
        verdict = await self.gate.check(name, arguments, identity, traceparent)
        if verdict.forward:
            return verdict
        self.stats.refused += 1
        await self._to_client(
            JSONRPCMessage(
                JSONRPCResponse(jsonrpc="2.0", id=req.id, result=refusal_result(verdict))
            )
        )
        return None

    async def _check_read(
        self, req: JSONRPCRequest, identity: Identity, traceparent: str
    ) -> Verdict | None:
        name, arguments = decided_call(req.method, req.params)
        verdict = await self.gate.check(name, arguments, identity, traceparent)
        if verdict.forward:
            return verdict
        self.stats.refused += 1
        refused = refusal_result(verdict)
        error = ErrorData(
            code=POLICY_REFUSED,
            message=refused["content"][0]["text"],
            data=refused["structuredContent"],
        )
        await self._to_client(JSONRPCMessage(JSONRPCError(jsonrpc="2.0", id=req.id, error=error)))
        return None

    async def _client_cancelled(self, note: JSONRPCNotification) -> None:
        """The client gave up on a request: close its span. Quota stays spent (the call may
        have run; giving it back would let an agent bypass a limit by cancelling)."""
        rid = (note.params or {}).get("requestId")
        if not isinstance(rid, str | int):
            return
        entry = self._pop(rid)
        if entry is not None and entry.verdict is not None:
            duration = self.gate.finish(entry.verdict, "error", 0, "cancelled")
            await self.gate.report(entry.verdict, "ok", duration, 0, "cancelled")

    async def _answer_malformed(self, exc: Exception) -> None:
        """The transport could not parse a message: answer as :mod:`framing` would (with
        the request's id when it can be read, else null)."""
        self._count("malformed")
        raw = self.on_malformed(exc) if self.on_malformed is not None else None
        refusal = Refusal(PARSE_ERROR, "parse error: the message is not valid JSON")
        if raw is not None:
            doc = parse_json(raw.encode("utf-8", errors="surrogateescape"))
            if isinstance(doc, Refusal):
                refusal = doc
            else:
                rid = doc.get("id") if isinstance(doc, dict) else None
                refusal = Refusal(
                    INVALID_REQUEST,
                    "invalid request: not a valid JSON-RPC 2.0 message",
                    rid if usable_id(rid) else None,
                )
        log.warning("malformed message from the client: %s", refusal.reason)
        await self._error(refusal.id, refusal.code, refusal.reason)

    # ------------------------------------------------------------------ upstream -> client

    async def _from_upstream(self, item: SessionMessage | Exception) -> None:
        if isinstance(item, Exception):
            self._upstream_noise(item)
            return
        message = item.message
        root = message.root
        if isinstance(root, JSONRPCResponse | JSONRPCError):
            if self._reinit_id is not None and root.id == self._reinit_id:
                if isinstance(root, JSONRPCError):
                    self._reinit_error = root.error.message
                if self._reinit_done is not None:
                    self._reinit_done.set()
                return
            entry = self._pop(root.id)
            if entry is None:
                self.stats.dropped_late_responses += 1
                return
            if entry.method == "tools/list" and isinstance(root, JSONRPCResponse):
                message = self._filter_listing(root)
            if entry.verdict is not None:
                await self._complete_call(entry.verdict, message)
                return
            await self._to_client(message)
            return
        if isinstance(root, JSONRPCRequest):
            key = str(root.id)
            if key in self._server_inflight:
                self._count("upstream_duplicate_id")
                error = ErrorData(
                    code=INVALID_REQUEST, message=f"id {key[:64]!r} is already in flight"
                )
                await self._send_up(
                    JSONRPCMessage(
                        JSONRPCError.model_construct(jsonrpc="2.0", id=None, error=error)
                    )
                )
                return
            self._server_inflight.add(key)
        related: RequestId | None = None
        if isinstance(root, JSONRPCNotification) and root.method == "notifications/progress":
            related = self._progress.get((root.params or {}).get("progressToken"))
        if related is None and len(self._inflight) == 1:
            related = next(iter(self._inflight))
        await self._to_client(message, related)

    def _filter_listing(self, resp: JSONRPCResponse) -> JSONRPCMessage:
        tools = resp.result.get("tools")
        if not isinstance(tools, list):
            return JSONRPCMessage(resp)
        shown = self.gate.visible(tools)
        if len(shown) == len(tools):
            return JSONRPCMessage(resp)
        result = {**resp.result, "tools": shown}
        return JSONRPCMessage(JSONRPCResponse(jsonrpc="2.0", id=resp.id, result=result))

    async def _complete_call(self, verdict: Verdict, message: JSONRPCMessage) -> None:
        root = message.root
        if isinstance(root, JSONRPCError):
            outcome, error_type, size = "error", f"jsonrpc_{root.error.code}", 0
        else:
            assert isinstance(root, JSONRPCResponse)
            size = len(json.dumps(root.result, separators=(",", ":"), default=str))
            failed = root.result.get("isError") is True
            outcome, error_type = ("error", "tool_error") if failed else ("ok", "")
        duration = self.gate.finish(verdict, outcome, size, error_type)
        if outcome == "error":
            # Give the quota back before the client hears of the failure, so that an
            # immediate retry already finds it.
            await self.gate.report(verdict, outcome, duration, size, error_type)
            await self._to_client(message)
        else:  # nothing to give back: answer first, report after
            await self._to_client(message)
            await self.gate.report(verdict, outcome, duration, size, error_type)

    # ------------------------------------------------------------------ failures

    async def _sweep(self) -> None:
        """Expire requests past their deadline. One task per session rather than one
        timer per request: a timer task per call cost more CPU than the decision."""
        interval = max(0.05, min(1.0, self.call_timeout / 4))
        while True:
            await anyio.sleep(interval)
            now = anyio.current_time()
            for rid in [r for r, e in self._inflight.items() if e.deadline <= now]:
                await self._expire(rid)

    async def _expire(self, rid: RequestId) -> None:
        entry = self._pop(rid)
        if entry is None:
            return
        self._count("timeout")
        cancel = JSONRPCNotification(
            jsonrpc="2.0",
            method="notifications/cancelled",
            params={"requestId": rid, "reason": "callward: upstream timeout"},
        )
        await self._send_up(JSONRPCMessage(cancel))
        await self._fail_request(
            rid,
            entry.method,
            entry.verdict,
            f"upstream server did not answer {entry.method} within {entry.timeout:g} s",
            "timeout",
            code=UPSTREAM_TIMEOUT,
        )

    async def _fail_all(self, why: str) -> None:
        pending = list(self._inflight.items())
        self._inflight.clear()
        self._inflight_keys.clear()
        self._progress.clear()
        self._server_inflight.clear()  # the new server knows nothing of the old one's asks
        for rid, entry in pending:
            await self._fail_request(rid, entry.method, entry.verdict, why, "upstream_closed")

    async def _fail_request(
        self,
        rid: RequestId,
        method: str,
        verdict: Verdict | None,
        why: str,
        error_type: str,
        *,
        code: int = UPSTREAM_UNAVAILABLE,
    ) -> None:
        self._count(error_type)
        duration = 0.0
        if verdict is not None:
            duration = self.gate.finish(verdict, "error", 0, error_type)
            await self.gate.report(verdict, "error", duration, 0, error_type)
        await self._error(rid, code, why)

    # ------------------------------------------------------------------ plumbing

    def _pop(self, rid: RequestId) -> Inflight | None:
        entry = self._inflight.pop(rid, None)
        if entry is not None:
            self._inflight_keys.discard(str(rid))
        if entry is not None and entry.progress_token is not None:
            self._progress.pop(entry.progress_token, None)
        return entry

    def _upstream_noise(self, exc: Exception) -> None:
        """A line on the upstream's stdout that is not JSON-RPC: servers that print (a
        banner, a debug line) are common, so it is ignored, with one warning per burst.
        The line itself is not logged: a tool's output can carry secrets."""
        self._count("upstream_malformed")
        now = anyio.current_time()
        if now - self._noise_last >= NOISE_BURST_GAP:
            log.warning(
                "the upstream server wrote output that is not JSON-RPC to stdout (%s); "
                "ignored, and more of it within %.0f s is counted without a warning "
                "(MCP servers must log to stderr)",
                type(exc).__name__,
                NOISE_BURST_GAP,
            )
        self._noise_last = now

    def _count(self, kind: str) -> None:
        self.stats.errors[kind] = self.stats.errors.get(kind, 0) + 1

    async def _send_up(self, message: JSONRPCMessage) -> bool:
        writer = self._up_write
        if writer is None:
            return False
        try:
            await writer.send(SessionMessage(message))
            return True
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False

    async def _to_client(self, message: JSONRPCMessage, related: RequestId | None = None) -> None:
        writer = self._client_write
        if writer is None:
            return
        metadata = (
            ServerMessageMetadata(related_request_id=related) if related is not None else None
        )
        try:
            await writer.send(SessionMessage(message, metadata=metadata))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            log.debug("client went away; message dropped")

    async def _error(self, rid: RequestId | None, code: int, message: str) -> None:
        error = ErrorData(code=code, message=message)
        if rid is None:
            # JSON-RPC answers an unreadable request with id null; the SDK type needs an
            # id, so build it unvalidated (the SDK's writers then omit the null id).
            root: Any = JSONRPCError.model_construct(jsonrpc="2.0", id=None, error=error)
        else:
            root = JSONRPCError(jsonrpc="2.0", id=rid, error=error)
        await self._to_client(JSONRPCMessage.model_construct(root=root))


def decided_call(method: str, params: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The (pseudo-)tool and arguments under which a decided request is judged.

    ``tools/call`` is its tool; the other decided methods are judged as their
    :data:`PSEUDO_TOOLS` name (``resources:read``, ``prompts:get``,
    ``completion:complete``) with their params without ``_meta`` as arguments, so
    ``args.uri`` of ``resources/read`` and ``args.name`` of ``prompts/get`` are what a
    rule's conditions look at.
    """
    params = params or {}
    if method == "tools/call":
        name, arguments = params.get("name"), params.get("arguments")
        return str(name), arguments if isinstance(arguments, dict) else {}
    return PSEUDO_TOOLS[method], {k: v for k, v in params.items() if k != "_meta"}


def _progress_token(params: dict[str, Any] | None) -> Any:
    meta = (params or {}).get("_meta")
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    return token if isinstance(token, str | int) else None


__all__ = [
    "DECIDED_METHODS",
    "DEFAULT_CALL_TIMEOUT",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "MESSAGE_TOO_LARGE",
    "OVERSIZE_METHOD",
    "PARSE_ERROR",
    "POLICY_REFUSED",
    "PSEUDO_TOOLS",
    "REFUSED_METHOD",
    "UPSTREAM_TIMEOUT",
    "UPSTREAM_UNAVAILABLE",
    "IdentityResolver",
    "Relay",
    "decided_call",
]
