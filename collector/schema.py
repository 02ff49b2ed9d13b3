"""The one schema of a tool-call record, shared by the collector, the dataset generator,
the detectors, replay and the dashboard. docs/schema.md documents it.

The store is Hive-partitioned Parquet (``D/tool_calls/date=YYYY-MM-DD/*.parquet``) plus a
DuckDB file ``D/callward.duckdb`` whose view ``tool_calls`` reads those files.
"""

from __future__ import annotations

import pyarrow as pa

TABLE = "tool_calls"
DUCKDB_FILE = "callward.duckdb"
PARQUET_DIR = "tool_calls"
POLICIES_DIR = "policies"
PARTITION_COLUMN = "date"

DECISIONS = ("allow", "deny", "require_approval")
OUTCOMES = ("ok", "error")

TOOL_CALL_SCHEMA = pa.schema(
    [
        pa.field("start_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("end_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("trace_id", pa.string(), nullable=False),  # 32 lowercase hex
        pa.field("span_id", pa.string(), nullable=False),  # 16 lowercase hex
        pa.field("parent_span_id", pa.string()),  # "" for a root span
        pa.field("call_id", pa.string()),  # gen_ai.tool.call.id
        pa.field("agent_id", pa.string()),  # gen_ai.agent.id
        pa.field("session_id", pa.string()),  # gen_ai.conversation.id
        pa.field("grant", pa.string()),  # callward.grant
        pa.field("server", pa.string()),  # callward.server
        pa.field("tool", pa.string()),  # gen_ai.tool.name
        pa.field("arguments", pa.string()),  # JSON text, redacted
        pa.field("decision", pa.string()),  # allow | deny | require_approval | "" (no decision)
        pa.field("rule", pa.string()),  # JSON pointer into the policy
        pa.field("message", pa.string()),
        pa.field("policy_version", pa.string()),
        pa.field("outcome", pa.string()),  # ok | error | "" (not executed / unknown)
        pa.field("error_type", pa.string()),
        pa.field("duration_ms", pa.float64()),
        pa.field("result_bytes", pa.int64()),
        pa.field("service_name", pa.string()),
        pa.field("attributes", pa.string()),  # JSON object of every other attribute
    ]
)

COLUMNS = tuple(TOOL_CALL_SCHEMA.names)
STRING_COLUMNS = tuple(f.name for f in TOOL_CALL_SCHEMA if pa.types.is_string(f.type))
