"""The Enforcer protobuf messages in and out of the service core.

Decoding validates every field a caller sends (sizes, JSON arguments, outcome) and raises
:class:`InvalidRequest` saying what is wrong; :class:`EnforcerService` is the core with a
message-level ``check``/``report`` face, which is what the gRPC handlers call.

Decoding is on every Check's path, so a well-formed message takes one short pass:
the length checks are one combined comparison (the per-field message is only worked out
when it fails), the arguments go through one shared ``JSONDecoder`` (``json.loads`` with
an option builds a new decoder per call), and the engine's ``Request`` is built without
NamedTuple's Python-level constructor.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from callward.auth import Principal
from callward.enforcer.engine import ALLOW, DENY, REQUIRE_APPROVAL, Decision, Request
from callward.enforcer.json_values import (
    MAX_DOUBLE_DIGITS,
    NonFiniteNumber,
    finite_float,
    finite_int,
    reject_constant,
)
from callward.enforcer.service import OUTCOMES, EnforcerCore, InvalidRequest, new_call_id
from callward.proto.callward.v1 import enforcer_pb2 as pb

log = logging.getLogger("callward.enforcer")

MAX_NAME_CHARS = 256
"""Tool and server names longer than this are refused: decisions are cached per name."""
MAX_ID_CHARS = 1024
"""call_id, agent_id, session_id and grant key counters and the pending map."""

_DECISION_TO_PROTO = {
    ALLOW: pb.DECISION_ALLOW,
    DENY: pb.DECISION_DENY,
    REQUIRE_APPROVAL: pb.DECISION_REQUIRE_APPROVAL,
}
_JSON_TYPE = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
_tuple_new = tuple.__new__


# Numbers are read as the server will read them: NaN, Infinity and literals beyond a
# double's range are refused (callward.enforcer.json_values). Integer literals are only
# checked in a text long enough to hold one out of range (a call per integer otherwise).
_ARGUMENTS_DECODER = json.JSONDecoder(parse_constant=reject_constant, parse_float=finite_float)
_LONG_ARGUMENTS_DECODER = json.JSONDecoder(
    parse_constant=reject_constant, parse_float=finite_float, parse_int=finite_int
)
# The C scanner under ``decode``: a text that is one JSON value with nothing around it
# (what every client sends) is read by it alone, without decode's two regex passes; any
# other text goes through ``parse_arguments``, which gives the exact error.
_scan_json = _ARGUMENTS_DECODER.scan_once  # type: ignore[attr-defined]
_scan_long_json = _LONG_ARGUMENTS_DECODER.scan_once  # type: ignore[attr-defined]


def parse_arguments(text: str) -> dict[str, Any]:
    """The call's arguments: a JSON object in text; an empty string means no arguments."""
    if text == "":
        return {}
    decoder = _LONG_ARGUMENTS_DECODER if len(text) >= MAX_DOUBLE_DIGITS else _ARGUMENTS_DECODER
    try:
        value = decoder.decode(text)
    except RecursionError:
        raise InvalidRequest("arguments_json is nested too deeply") from None
    except NonFiniteNumber as e:
        raise InvalidRequest(
            f"arguments_json is refused: {e} (NaN, Infinity and numbers beyond a double's "
            "range are not accepted)"
        ) from None
    except ValueError as e:
        raise InvalidRequest(f"arguments_json is not valid JSON: {e}") from None
    if type(value) is not dict:
        kind = _JSON_TYPE.get(type(value), "number")
        raise InvalidRequest(f"arguments_json must be a JSON object, got a JSON {kind}")
    return value


def _bounded(field: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidRequest(f"{field} is {len(value)} characters long; the limit is {limit}")
    return value


def _too_long(fields: dict[str, str]) -> InvalidRequest:
    for name, value in fields.items():
        limit = MAX_NAME_CHARS if name in ("tool", "server") else MAX_ID_CHARS
        if len(value) > limit:
            return InvalidRequest(f"{name} is {len(value)} characters long; the limit is {limit}")
    raise AssertionError("called without a field over its limit")


def to_request(msg: pb.CheckRequest, call_id: str) -> Request:
    """Validate a CheckRequest and turn it into the engine's :class:`Request`."""
    return _request_of(msg, call_id, msg.arguments_json)


def _request_of(msg: pb.CheckRequest, call_id: str, arguments_json: str) -> Request:
    tool, server, grant = msg.tool, msg.server, msg.grant
    agent_id, session_id = msg.agent_id, msg.session_id
    if not tool:
        raise InvalidRequest("tool must not be empty")
    if (
        len(tool) > MAX_NAME_CHARS
        or len(server) > MAX_NAME_CHARS
        or max(len(grant), len(agent_id), len(session_id), len(call_id)) > MAX_ID_CHARS
    ):
        raise _too_long(
            {
                "tool": tool,
                "server": server,
                "grant": grant,
                "agent_id": agent_id,
                "session_id": session_id,
                "call_id": call_id,
            }
        )
    arguments: Any = None
    if arguments_json[:1] == "{":
        scan = _scan_json if len(arguments_json) < MAX_DOUBLE_DIGITS else _scan_long_json
        try:
            arguments, end = scan(arguments_json, 0)
        except (StopIteration, ValueError, RecursionError):
            arguments = None
        else:
            if end != len(arguments_json):
                arguments = None
    if type(arguments) is not dict:
        arguments = parse_arguments(arguments_json)
    return _tuple_new(Request, (tool, arguments, server, grant, agent_id, session_id, call_id))


def decode_check(msg: pb.CheckRequest) -> tuple[Request, int]:
    """The engine request (with a fresh call_id if none was sent) and its fingerprint.

    The fingerprint covers everything the decision depends on, with the arguments as sent,
    so a retry is recognised without comparing decoded JSON.
    """
    call_id = msg.call_id
    if len(call_id) > MAX_ID_CHARS:
        raise InvalidRequest(
            f"call_id is {len(call_id)} characters long; the limit is {MAX_ID_CHARS}"
        )
    arguments_json = msg.arguments_json
    req = _request_of(msg, call_id or new_call_id(), arguments_json)
    return req, hash((req[0], req[2], req[3], req[4], req[5], arguments_json))


def check_response(decision: Decision, call_id: str) -> pb.CheckResponse:
    return pb.CheckResponse(
        decision=_DECISION_TO_PROTO.get(decision.decision, pb.DECISION_UNSPECIFIED),
        rule=decision.rule,
        message=decision.message,
        policy_version=decision.policy_version,
        call_id=call_id,
    )


def decode_report(msg: pb.ReportRequest) -> tuple[str, str, float, int, str]:
    """(call_id, outcome, duration_ms, result_bytes, error_type) of a valid ReportRequest."""
    if not msg.call_id:
        raise InvalidRequest("call_id must not be empty")
    if msg.outcome not in OUTCOMES:
        raise InvalidRequest(f'outcome must be "ok" or "error", got {msg.outcome[:32]!r}')
    if not (math.isfinite(msg.duration_ms) and msg.duration_ms >= 0):
        raise InvalidRequest("duration_ms must be a finite number >= 0")
    if msg.result_bytes < 0:
        raise InvalidRequest("result_bytes must be >= 0")
    error_type = _bounded("error_type", msg.error_type, MAX_NAME_CHARS)
    return msg.call_id, msg.outcome, msg.duration_ms, msg.result_bytes, error_type


class EnforcerService(EnforcerCore):
    """The service core taking and returning Enforcer protobuf messages.

    ``principal`` is the authenticated caller (None when authentication is off). Its grant
    replaces whatever grant the Check names, as a gateway in front of OPA or Envoy takes
    the authenticated principal rather than a claimed one: a caller cannot spend another
    grant's quota or meet another grant's conditions by naming it. The first Check whose
    claim differs is logged once, so that a client that expected its claim to count can be
    found.
    """

    _override_logged = False

    def check(self, msg: pb.CheckRequest, principal: Principal | None = None) -> pb.CheckResponse:
        owner = ""
        if principal is not None:
            owner = principal.id
            if msg.grant != principal.grant:
                if msg.grant and not self._override_logged:
                    self._override_logged = True
                    log.warning(
                        "a Check named grant %r under a credential for grant %r; the "
                        "credential's grant is used (logged once)",
                        msg.grant[:64],
                        principal.grant,
                    )
                msg.grant = principal.grant
        req, fingerprint = decode_check(msg)
        traceparent = mcp_session_id = ""
        if self.recorder is not None:
            traceparent, mcp_session_id = msg.traceparent, msg.mcp_session_id
        decision = self.check_call(req, fingerprint, traceparent, mcp_session_id, owner)
        return check_response(decision, req.call_id)

    def report(
        self, msg: pb.ReportRequest, principal: Principal | None = None
    ) -> pb.ReportResponse:
        owner = "" if principal is None else principal.id
        return pb.ReportResponse(released=self.report_call(*decode_report(msg), owner=owner))


__all__ = [
    "MAX_ID_CHARS",
    "MAX_NAME_CHARS",
    "EnforcerService",
    "check_response",
    "decode_check",
    "decode_report",
    "parse_arguments",
    "to_request",
]
