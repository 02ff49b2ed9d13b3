from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_ALLOW: _ClassVar[Decision]
    DECISION_DENY: _ClassVar[Decision]
    DECISION_REQUIRE_APPROVAL: _ClassVar[Decision]
DECISION_UNSPECIFIED: Decision
DECISION_ALLOW: Decision
DECISION_DENY: Decision
DECISION_REQUIRE_APPROVAL: Decision

class CheckRequest(_message.Message):
    __slots__ = ("call_id", "agent_id", "session_id", "grant", "server", "tool", "arguments_json", "traceparent", "mcp_session_id")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    MCP_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    agent_id: str
    session_id: str
    grant: str
    server: str
    tool: str
    arguments_json: str
    traceparent: str
    mcp_session_id: str
    def __init__(self, call_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., session_id: _Optional[str] = ..., grant: _Optional[str] = ..., server: _Optional[str] = ..., tool: _Optional[str] = ..., arguments_json: _Optional[str] = ..., traceparent: _Optional[str] = ..., mcp_session_id: _Optional[str] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("decision", "rule", "message", "policy_version", "call_id")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    rule: str
    message: str
    policy_version: str
    call_id: str
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., rule: _Optional[str] = ..., message: _Optional[str] = ..., policy_version: _Optional[str] = ..., call_id: _Optional[str] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("call_id", "outcome", "duration_ms", "result_bytes", "error_type")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    RESULT_BYTES_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    outcome: str
    duration_ms: float
    result_bytes: int
    error_type: str
    def __init__(self, call_id: _Optional[str] = ..., outcome: _Optional[str] = ..., duration_ms: _Optional[float] = ..., result_bytes: _Optional[int] = ..., error_type: _Optional[str] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: int
    def __init__(self, released: _Optional[int] = ...) -> None: ...
