"""OTLP spans into tool-call rows: mapping, foreign agents, policies, bad and hostile input."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from callward.collector.decode import (
    DecodeLimits,
    Decoder,
    any_value,
    clip,
    is_tool_call,
    set_any_value,
)
from callward.collector.otlp_build import SpanSpec, build_request, callward_attributes
from callward.collector.otlp_parse import MalformedRequestError, parse_request
from callward.collector.schema import DECISIONS, OUTCOMES, TOOL_CALL_SCHEMA
from callward.collector.store import conform
from tests.collector.test_redact import FIELDS, plant

NOW = time.time_ns()
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
GITHUB = "ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"


def decode(
    *specs: SpanSpec, resource: dict[str, Any] | None = None, limits: DecodeLimits | None = None
):
    return Decoder(limits).decode(build_request(list(specs), resource), NOW)


def only_row(result) -> dict[str, Any]:
    assert result.table.num_rows == 1, result.reasons
    return result.table.to_pylist()[0]


def test_callward_span_maps_to_every_column() -> None:
    spec = SpanSpec(attributes=callward_attributes(3, **{"callward.message": "fine"}))
    row = only_row(decode(spec, resource={"service.name": "enf", "host.name": "h1"}))
    assert row["trace_id"] == spec.trace_id.hex() and row["span_id"] == spec.span_id.hex()
    assert row["parent_span_id"] == ""
    assert (row["call_id"], row["agent_id"], row["session_id"]) == (
        "call-3",
        "agent-7",
        "session-1",
    )
    assert (row["grant"], row["server"], row["tool"]) == ("files-ro", "filesystem", "read_file")
    assert json.loads(row["arguments"]) == {"path": "/srv/data/file-3.txt"}
    assert (row["decision"], row["rule"], row["message"]) == ("allow", "/tools/read_file", "fine")
    assert row["policy_version"] == "sha256:0123456789abcdef"
    assert (row["outcome"], row["error_type"]) == ("ok", "")
    assert (row["duration_ms"], row["result_bytes"]) == (1.25, 512)
    assert row["service_name"] == "enf"
    assert int(row["start_time"].timestamp() * 1e6) == spec.start_ns // 1000
    extra = json.loads(row["attributes"])
    assert extra == {
        "mcp.method.name": "tools/call",
        "mcp.session.id": "mcp-1",
        "otel.scope.name": "callward",
        "resource.host.name": "h1",
    }


def test_span_from_another_genai_agent_lands_with_an_empty_decision() -> None:
    parent = b"\x01" * 8
    spec = SpanSpec(
        name="execute_tool get_weather",
        parent_span_id=parent,
        start_ns=NOW - 5_000_000,
        end_ns=NOW,
        attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.call.id": "c1"},
    )
    row = only_row(decode(spec, resource={"service.name": "other-agent"}))
    assert (row["tool"], row["decision"], row["outcome"]) == ("get_weather", "", "ok")
    assert row["parent_span_id"] == parent.hex()
    assert row["duration_ms"] == pytest.approx(5.0)
    assert row["service_name"] == "other-agent"


def test_failed_foreign_call_is_an_error_outcome() -> None:
    spec = SpanSpec(
        name="run tool",
        attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "t"},
        status_code=Status.STATUS_CODE_ERROR,
        status_message="boom",
    )
    row = only_row(decode(spec))
    assert row["outcome"] == "error"
    extra = json.loads(row["attributes"])
    assert extra["otel.status_code"] == "ERROR" and extra["otel.status_description"] == "boom"
    assert extra["otel.span.name"] == "run tool"


def test_denied_call_without_outcome_keeps_outcome_empty() -> None:
    attrs = callward_attributes(0, **{"callward.decision": "deny"})
    del attrs["callward.outcome"]
    row = only_row(decode(SpanSpec(attributes=attrs)))
    assert (row["decision"], row["outcome"]) == ("deny", "")


def test_other_spans_are_ignored_not_rejected() -> None:
    result = decode(SpanSpec(name="chat gpt-4", attributes={"gen_ai.operation.name": "chat"}))
    assert (result.table.num_rows, result.rejected, result.spans_seen) == (0, 0, 1)
    assert not is_tool_call(
        build_request([SpanSpec(name="GET /")]).resource_spans[0].scope_spans[0].spans[0]
    )


def test_policy_span_yields_a_document_not_a_row() -> None:
    doc = {"version": "1", "default": "deny"}
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    version = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]
    good = SpanSpec(
        name="callward.policy",
        attributes={
            "callward.policy.version": version,
            "callward.policy.document": json.dumps(doc),
        },
    )
    forged = SpanSpec(
        name="callward.policy",
        attributes={
            "callward.policy.version": "sha256:0000000000000000",
            "callward.policy.document": canonical,
        },
    )
    escape = SpanSpec(
        name="callward.policy",
        attributes={
            "callward.policy.version": "../../etc/passwd",
            "callward.policy.document": "{}",
        },
    )
    result = decode(good, forged, escape)
    assert result.table.num_rows == 0
    assert [(p.version, p.document) for p in result.policies] == [(version, canonical)]
    assert result.rejected == 2
    assert "does not match" in result.error_message()
    assert "valid callward.policy.version" in result.error_message()


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (SpanSpec(trace_id=bytes(16)), "invalid trace_id"),
        (SpanSpec(trace_id=b"\x01" * 15), "invalid trace_id"),
        (SpanSpec(span_id=bytes(8)), "invalid span_id"),
        (SpanSpec(span_id=b"\x01" * 9), "invalid span_id"),
        (SpanSpec(start_ns=NOW, end_ns=NOW - 1), "end_time before start_time"),
        (SpanSpec(start_ns=NOW + 10**9 * 86400 * 2), "in the future"),
        (SpanSpec(start_ns=2**64 - 10, end_ns=2**64 - 1), "in the future"),
    ],
)
def test_invalid_spans_are_rejected_with_a_reason(spec: SpanSpec, reason: str) -> None:
    spec.attributes = callward_attributes()
    good = SpanSpec(attributes=callward_attributes())
    result = decode(good, spec)
    assert result.table.num_rows == 1 and result.rejected == 1
    assert reason in result.error_message()


def test_zero_timestamps_are_rejected() -> None:
    request = build_request([SpanSpec(attributes=callward_attributes())])
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.start_time_unix_nano = 0
    result = Decoder().decode(request, NOW)
    assert result.rejected == 1 and "missing start_time" in result.error_message()
    span.start_time_unix_nano, span.end_time_unix_nano = NOW, 0
    assert "missing end_time" in Decoder().decode(request, NOW).error_message()


def test_only_the_first_reasons_are_listed() -> None:
    result = decode(
        *[SpanSpec(span_id=bytes(8), attributes=callward_attributes()) for _ in range(9)]
    )
    assert result.rejected == 9
    assert result.error_message().startswith(
        "9 span(s) rejected"
    ) and result.error_message().endswith("...")


def test_odd_attribute_types_become_json_or_null() -> None:
    attrs = callward_attributes(
        **{
            "gen_ai.tool.name": 42,
            "gen_ai.tool.call.arguments": {"nested": [1, "two", {"three": True}]},
            "callward.decision": "maybe",
            "callward.outcome": ["ok"],
            "callward.duration_ms": "slow",
            "callward.result_bytes": 1.5,
            "weird.nan": float("nan"),
            "weird.bytes": b"\x00\xff",
            "weird.empty": None,
        }
    )
    row = only_row(decode(SpanSpec(attributes=attrs)))
    assert row["tool"] == "42"
    assert json.loads(row["arguments"]) == {"nested": [1, "two", {"three": True}]}
    # Unknown enum values are kept in attributes; the outcome then comes from the status.
    assert (row["decision"], row["outcome"]) == ("", "ok")
    assert row["result_bytes"] is None
    assert row["duration_ms"] == pytest.approx(1.0)  # falls back to the span's duration
    extra = json.loads(row["attributes"])
    assert extra["callward.decision"] == "maybe" and extra["callward.outcome"] == ["ok"]
    assert extra["callward.duration_ms"] == "slow" and extra["gen_ai.tool.name"] == 42
    assert extra["weird.nan"] == "nan" and extra["weird.bytes"] == "AP8="
    assert extra["weird.empty"] is None


def test_huge_values_are_cut_with_a_marker() -> None:
    limits = DecodeLimits(max_value_bytes=1024)
    huge = "é" * 100_000
    attrs = callward_attributes(
        **{"gen_ai.tool.call.arguments": json.dumps({"x": huge}), "big": huge}
    )
    row = only_row(decode(SpanSpec(attributes=attrs), limits=limits))
    assert row["arguments"].endswith("bytes]") and "[TRUNCATED:" in row["arguments"]
    assert len(row["arguments"].encode()) < 1024 + 40
    big = json.loads(row["attributes"])["big"]
    assert big.startswith("éé") and big.endswith(f"[TRUNCATED:{len(huge.encode())} bytes]")


def test_many_attributes_keep_the_attributes_json_bounded() -> None:
    limits = DecodeLimits(max_value_bytes=1000)
    attrs = callward_attributes(**{f"k{i:04d}": "v" * 900 for i in range(50)})
    row = only_row(decode(SpanSpec(attributes=attrs), limits=limits))
    extra = json.loads(row["attributes"])
    assert len(row["attributes"].encode()) <= limits.max_attributes_bytes + 100
    assert extra["callward.collector.dropped_attributes"] > 0


def test_clip_never_splits_a_character() -> None:
    assert clip("abc", 10) == "abc"
    cut = clip("€" * 10, 7)  # 3 bytes each: two whole characters fit
    assert cut.startswith("€€") and cut[2] == "["


def test_secrets_are_redacted_everywhere_they_can_appear() -> None:
    attrs = callward_attributes(
        **{
            "gen_ai.tool.call.arguments": json.dumps({"key": AWS_KEY, "token": GITHUB}),
            "http.url": f"https://u:hunter2secret@example.com/?k={GITHUB}",
            "gen_ai.tool.call.id": AWS_KEY,
            "db.password": "correct horse battery staple",
        }
    )
    result = decode(SpanSpec(attributes=attrs), resource={"service.name": "s", "api.key": GITHUB})
    text = json.dumps(result.table.to_pylist(), default=str)
    for secret in (AWS_KEY, GITHUB, "hunter2secret", "correct horse battery staple"):
        assert secret not in text
    assert "[REDACTED:" in text


def test_redact_in_place_cleans_what_is_forwarded() -> None:
    request = build_request(
        [
            SpanSpec(
                attributes=callward_attributes(
                    **{"gen_ai.tool.call.arguments": json.dumps({"k": AWS_KEY})}
                )
            ),
            SpanSpec(name="GET /", attributes={"nested": {"deep": [GITHUB]}}),
        ],
        resource={"service.name": "s", "token": GITHUB},
    )
    Decoder().redact_in_place(request)
    raw = request.SerializeToString()
    assert AWS_KEY.encode() not in raw and GITHUB.encode() not in raw


@pytest.mark.parametrize("field_name", FIELDS)
def test_a_secret_in_any_field_is_redacted_in_rows_reasons_and_the_forwarded_copy(
    field_name: str,
) -> None:
    """The in-process half of tests/collector/test_redact.py, one field at a time."""
    request = plant(field_name, GITHUB, os.urandom(8))
    decoder = Decoder()
    result = decoder.decode(request, time.time_ns())
    assert result.table.num_rows == 1
    assert GITHUB not in json.dumps(result.table.to_pylist(), default=str)
    assert GITHUB not in result.error_message()
    decoder.redact_in_place(request)
    assert GITHUB.encode() not in request.SerializeToString()
    assert b"[REDACTED:github_token]" in request.SerializeToString()


def test_non_utf8_text_is_repaired_not_refused() -> None:
    attrs = {"gen_ai.operation.name": "execute_tool", "note": "QQQQ"}
    request = build_request([SpanSpec(name="execute_tool QQQQ", attributes=attrs)])
    data = request.SerializeToString().replace(b"QQQQ", b"\xff\xfeok")
    parsed, repaired = parse_request(data)
    assert repaired
    row = only_row(Decoder().decode(parsed, NOW))
    assert row["tool"] == "\ufffd\ufffdok"
    assert json.loads(row["attributes"])["note"] == "\ufffd\ufffdok"


@pytest.mark.parametrize(
    "data", [b"\xff" * 10, b"\x0a\xff\xff\xff\xff\x0f", b"\x08" * 3, bytes(range(256))]
)
def test_malformed_protobuf_is_refused(data: bytes) -> None:
    with pytest.raises(MalformedRequestError):
        parse_request(data)


def test_empty_request_decodes_to_no_rows() -> None:
    parsed, _ = parse_request(b"")
    result = Decoder().decode(parsed, NOW)
    assert result.table.num_rows == 0 and result.table.schema == TOOL_CALL_SCHEMA


def test_any_value_round_trips_through_set_any_value() -> None:
    value = {"a": [1, 2.5, True, "s", None], "b": {"c": []}}
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    holder = AnyValue()
    set_any_value(holder, value)
    assert any_value(holder) == value


# --- properties -------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=200),
    st.binary(max_size=50),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
mapped_keys = st.sampled_from(
    [
        "gen_ai.tool.name",
        "gen_ai.tool.call.id",
        "gen_ai.tool.call.arguments",
        "callward.decision",
        "callward.outcome",
        "callward.duration_ms",
        "callward.result_bytes",
        "gen_ai.operation.name",
        "error.type",
        "callward.policy.version",
    ]
)
attribute_maps = st.dictionaries(st.one_of(mapped_keys, st.text(max_size=30)), values, max_size=12)


@given(attrs=attribute_maps, resource=attribute_maps, name=st.text(max_size=40))
def test_arbitrary_attributes_never_crash_and_rows_fit_the_schema(
    attrs: dict[str, Any], resource: dict[str, Any], name: str
) -> None:
    spec = SpanSpec(name="execute_tool " + name, attributes=attrs)
    result = Decoder(DecodeLimits(max_value_bytes=256)).decode(build_request([spec], resource), NOW)
    assert result.table.num_rows + result.rejected == 1
    assert result.table.schema == TOOL_CALL_SCHEMA
    conform(result.table)  # the store accepts it as is
    for row in result.table.to_pylist():
        assert row["decision"] in ("", *DECISIONS)
        assert row["outcome"] in ("", *OUTCOMES)
        assert isinstance(json.loads(row["attributes"]), dict)


@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_either_parse_or_are_refused_cleanly(data: bytes) -> None:
    try:
        parsed, _ = parse_request(data)
    except MalformedRequestError:
        return
    table = Decoder().decode(parsed, NOW).table
    assert isinstance(table, pa.Table) and table.schema == TOOL_CALL_SCHEMA


def test_attribute_bags_that_compare_equal_keep_their_own_json() -> None:
    decoder = Decoder()
    rows = []
    for value in (True, 1, 1.0):
        spec = SpanSpec(attributes=callward_attributes(**{"flag": value}))
        rows.append(only_row(decoder.decode(build_request([spec]), NOW)))
    assert [json.loads(r["attributes"])["flag"] for r in rows] == [True, 1, 1.0]
    assert [type(json.loads(r["attributes"])["flag"]) for r in rows] == [bool, int, float]


span_specs = st.builds(
    lambda attrs, name, status: SpanSpec(
        name=name, attributes=attrs, status_code=status, status_message="m" if status else ""
    ),
    attrs=attribute_maps,
    name=st.sampled_from(["execute_tool", "execute_tool read_file", "execute_tool x", "other"]),
    status=st.sampled_from([0, 1, 2]),
)


@given(specs=st.lists(span_specs, min_size=1, max_size=8), repeat=st.integers(1, 3))
def test_a_batch_decodes_like_each_span_alone(specs: list[SpanSpec], repeat: int) -> None:
    """Columnar decoding and its caches (attributes by bytes, bags by content) give every
    span the row it gets when decoded alone by a fresh decoder, whatever came before."""
    warm = Decoder(DecodeLimits(max_value_bytes=256))
    batch = specs * repeat  # the same attributes again: served from the caches
    for _ in range(2):
        together = warm.decode(build_request(batch), NOW)
    alone: list[dict[str, Any]] = []
    for spec in batch:
        alone += (
            Decoder(DecodeLimits(max_value_bytes=256))
            .decode(build_request([spec]), NOW)
            .table.to_pylist()
        )
    assert together.table.to_pylist() == alone


def test_a_repeated_attribute_key_keeps_its_last_value() -> None:
    request = build_request([SpanSpec(attributes={})])
    span = request.resource_spans[0].scope_spans[0].spans[0]
    for key, value in [
        ("gen_ai.tool.name", "first"),
        ("extra", 1),
        ("gen_ai.tool.name", "second"),
        ("extra", 2),
    ]:
        set_any_value(span.attributes.add(key=key).value, value)
    row = only_row(Decoder().decode(request, NOW))
    assert row["tool"] == "second"
    assert json.loads(row["attributes"])["extra"] == 2


@given(specs=st.lists(span_specs, min_size=1, max_size=6), odd=st.sampled_from(["bad", "policy"]))
def test_the_clean_batch_path_and_the_span_by_span_path_agree(
    specs: list[SpanSpec], odd: str
) -> None:
    """A batch of storable tool-call spans is read field by field in bulk; one span that
    must be rejected (or a policy span) sends the batch span by span. Both give the good
    spans the same rows."""
    tool_specs = [s for s in specs if s.name.startswith("execute_tool")]
    if odd == "bad":
        extra = SpanSpec(start_ns=NOW + 10**15, end_ns=NOW + 10**15 + 1)  # far future
    else:
        extra = SpanSpec(
            name="callward.policy",
            attributes={
                "callward.policy.version": "sha256:" + hashlib.sha256(b"{}").hexdigest()[:16],
                "callward.policy.document": "{}",
            },
        )
    clean = Decoder().decode(build_request(tool_specs), NOW)
    mixed = Decoder().decode(build_request([*tool_specs, extra]), NOW)
    assert mixed.table.to_pylist() == clean.table.to_pylist()
    assert mixed.spans_seen == clean.spans_seen + 1
    assert mixed.rejected == (1 if odd == "bad" else 0)


@pytest.mark.parametrize(
    "version",
    [
        "md5:0123456789abcdef",
        "sha256:",
        "sha256:ABCDEF0123456789",
        "sha256:0123456789abcdef0",
        "v1",
    ],
)
def test_policy_span_with_a_version_the_enforcer_never_writes_is_refused(version: str) -> None:
    """md5:, a truncated or upper-case digest: only the enforcer's form names a file."""
    doc = json.dumps({"version": "1", "default": "deny"})
    result = decode(
        SpanSpec(
            name="callward.policy",
            attributes={"callward.policy.version": version, "callward.policy.document": doc},
        )
    )
    assert result.policies == []


def test_the_policies_folder_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from callward.collector import store
    from callward.record import policy_files

    monkeypatch.setattr(store, "MAX_POLICY_DOCUMENTS", 3)
    kept = [store.save_policy(tmp_path, f"sha256:{i:016x}", "{}") for i in range(5)]
    assert kept == [True, True, True, False, False]
    assert len(policy_files(tmp_path)) == 3
