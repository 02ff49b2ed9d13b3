"""Span names and attribute keys of a callward span: the contract between emitter and decoder.

The enforcer (``enforcer/telemetry.py``) writes these keys and the collector
(``collector/decode.py``) reads them; both import them from here, so a renamed key cannot
drift between the two. Keys of the OpenTelemetry GenAI and MCP semantic conventions keep
their upstream names (https://opentelemetry.io/docs/specs/semconv/gen-ai/ and
https://opentelemetry.io/docs/specs/semconv/gen-ai/mcp/); callward's own keys live under
``callward.``. docs/schema.md maps each key to its column of the tool-call record.

Each constant is defined once: ``tests/test_semconv.py`` fails if a value is repeated here
or written as a literal in the emitter or the decoder.
"""

from __future__ import annotations

import re
from typing import Final

# --- OTel GenAI semantic conventions -------------------------------------------------

GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
"""The GenAI operation; ``execute_tool`` marks a tool call."""

GEN_AI_OPERATION_EXECUTE_TOOL: Final = "execute_tool"
"""Value of :data:`GEN_AI_OPERATION_NAME` for a tool call, and the first word of its span name."""

GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
"""Name of the called tool (column ``tool``)."""

GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
"""The caller's id of this tool call (column ``call_id``)."""

GEN_AI_TOOL_CALL_ARGUMENTS: Final = "gen_ai.tool.call.arguments"
"""The call's arguments as JSON text, redacted before they are set (column ``arguments``)."""

GEN_AI_AGENT_ID: Final = "gen_ai.agent.id"
"""The agent that made the call (column ``agent_id``)."""

GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
"""The agent's session or conversation (column ``session_id``)."""

# --- OTel MCP semantic conventions ---------------------------------------------------

MCP_METHOD_NAME: Final = "mcp.method.name"
"""The MCP JSON-RPC method; always :data:`MCP_METHOD_TOOLS_CALL` on a call span."""

MCP_METHOD_TOOLS_CALL: Final = "tools/call"
"""Value of :data:`MCP_METHOD_NAME` for a tool call."""

MCP_SESSION_ID: Final = "mcp.session.id"
"""The MCP transport session (kept in the ``attributes`` bag)."""

# --- General OTel keys ---------------------------------------------------------------

ERROR_TYPE: Final = "error.type"
"""Why the tool call failed, when it did (column ``error_type``)."""

SERVICE_NAME: Final = "service.name"
"""Resource attribute: the emitting service (column ``service_name``)."""

OTEL_SCOPE_NAME: Final = "otel.scope.name"
"""Instrumentation scope of a span, kept in the bag when it is not callward's."""

OTEL_STATUS_CODE: Final = "otel.status_code"
"""Span status (``OK`` / ``ERROR``) as the bag records it."""

OTEL_STATUS_DESCRIPTION: Final = "otel.status_description"
"""Span status message as the bag records it."""

RESOURCE_KEY_PREFIX: Final = "resource."
"""Prefix of a resource attribute other than :data:`SERVICE_NAME` in the bag."""

# --- callward: the decision ----------------------------------------------------------

CALLWARD_DECISION: Final = "callward.decision"
"""``allow``, ``deny`` or ``require_approval`` (column ``decision``)."""

CALLWARD_RULE: Final = "callward.rule"
"""JSON pointer of the deciding rule in the policy (column ``rule``)."""

CALLWARD_MESSAGE: Final = "callward.message"
"""The decision's message to the agent, redacted (column ``message``)."""

CALLWARD_GRANT: Final = "callward.grant"
"""The grant the caller presented (column ``grant``)."""

CALLWARD_SERVER: Final = "callward.server"
"""The upstream MCP server (column ``server``)."""

CALLWARD_FAILURE_MODE: Final = "callward.failure_mode"
"""True when the decision came from the fail-open/closed setting, not from a policy."""

# --- callward: the outcome -----------------------------------------------------------

CALLWARD_OUTCOME: Final = "callward.outcome"
"""``ok`` or ``error`` once the upstream answered (column ``outcome``)."""

CALLWARD_DURATION_MS: Final = "callward.duration_ms"
"""Upstream time of the call in milliseconds (column ``duration_ms``)."""

CALLWARD_RESULT_BYTES: Final = "callward.result_bytes"
"""Size of the upstream result (column ``result_bytes``)."""

CALLWARD_TRUNCATED: Final = "callward.truncated"
"""Key of the JSON object that replaces oversize arguments."""

# --- callward: policy documents ------------------------------------------------------

POLICY_SPAN_NAME: Final = "callward.policy"
"""Name of the span that publishes one policy version's canonical document."""

CALLWARD_POLICY_VERSION: Final = "callward.policy.version"
# Its value: "sha256:" and the first 16 hex digits of the SHA-256 of the canonical policy
# (enforcer.policy_model.policy_version). The collector accepts no other form: the version
# names a file in the store, so anything looser lets a span choose a file name.
POLICY_DIGEST_HEX: Final = 16
POLICY_VERSION_FORM: Final = re.compile(rf"sha256:[0-9a-f]{{{POLICY_DIGEST_HEX}}}")
"""Content hash of the policy (column ``policy_version``; also on the policy span)."""

CALLWARD_POLICY_DOCUMENT: Final = "callward.policy.document"
"""The canonical policy document, on the policy span."""

CALLWARD_POLICY_SOURCE: Final = "callward.policy.source"
"""Where the policy was loaded from, on the policy span."""

CALLWARD_POLICY_LOADED_AT: Final = "callward.policy.loaded_at"
"""Unix time the enforcer loaded the policy, on the policy span."""

# --- callward: the collector's own bag keys ------------------------------------------

CALLWARD_COLLECTOR_DROPPED_ATTRIBUTES: Final = "callward.collector.dropped_attributes"
"""How many attributes the collector left out of an oversize bag."""

OTEL_SPAN_NAME: Final = "otel.span.name"
"""A call span's name, kept in the bag when it is not ``execute_tool <tool>``."""


def tool_call_span_name(tool: str) -> str:
    """The span name of a call of ``tool``: ``execute_tool <tool>`` (GenAI conventions)."""
    return f"{GEN_AI_OPERATION_EXECUTE_TOOL} {tool}"
