"""Decoding Enforcer messages for the core: valid messages in, InvalidRequest out otherwise."""

from __future__ import annotations

import pytest

from callward.enforcer.engine import Request
from callward.enforcer.messages import (
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    decode_check,
    decode_report,
    parse_arguments,
    to_request,
)
from callward.enforcer.service import InvalidRequest
from callward.proto.callward.v1 import enforcer_pb2 as pb


def check(**fields: str) -> pb.CheckRequest:
    return pb.CheckRequest(**{"tool": "read", **fields})


def test_a_valid_message_becomes_the_same_request_as_the_constructor_builds() -> None:
    msg = check(server="fs", grant="g", agent_id="a", session_id="s", arguments_json='{"p": [1]}')
    got = to_request(msg, "c1")
    want = Request(
        tool="read",
        arguments={"p": [1]},
        server="fs",
        grant="g",
        agent_id="a",
        session_id="s",
        call_id="c1",
    )
    assert got == want
    assert type(got) is Request
    assert got.call_id == "c1"


def test_missing_call_id_gets_a_fresh_one() -> None:
    (a, _), (b, _) = decode_check(check()), decode_check(check())
    assert a.call_id and b.call_id and a.call_id != b.call_id


def test_fingerprint_changes_with_the_request_not_with_the_call_id() -> None:
    _, base = decode_check(check(call_id="c1", arguments_json='{"x": 1}'))
    _, same = decode_check(check(call_id="c2", arguments_json='{"x": 1}'))
    _, other = decode_check(check(call_id="c1", arguments_json='{"x": 2}'))
    _, other_grant = decode_check(check(call_id="c1", arguments_json='{"x": 1}', grant="g"))
    assert base == same
    assert len({base, other, other_grant}) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1]", "JSON array"),
        ('"x"', "JSON string"),
        ("3", "JSON number"),
        ("{", "not valid JSON"),
        ('{"x": NaN}', "not valid JSON"),
        ("[" * 100_000, "nested too deeply|not valid JSON"),
    ],
)
def test_arguments_must_be_a_json_object(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_arguments(text)


NON_FINITE = [
    '{"x": NaN}',
    '{"x": Infinity}',
    '{"x": -Infinity}',
    '{"amount": -1e400}',
    '{"amount": 1E+999}',
    '{"amount": 1' + "0" * 400 + ".5}",
    '{"amount": -' + "9" * 400 + "}",
    '{"note": "' + "x" * 400 + '", "amount": [1, 1e309]}',
]


@pytest.mark.parametrize("text", NON_FINITE)
def test_numbers_no_double_holds_are_refused(text: str) -> None:
    """Python reads ``-1e400`` as minus infinity, which would pass ``lte 1000``."""
    with pytest.raises(InvalidRequest, match=r"arguments_json is refused: .*(NaN|Infinity|range)"):
        decode_check(check(arguments_json=text))


@pytest.mark.parametrize(
    "text",
    [
        '{"amount": 1.7976931348623157e308}',
        '{"amount": -' + "9" * 308 + "}",
        '{"amount": 1e-400}',
        '{"note": "' + "1e400 NaN " * 50 + '"}',
    ],
)
def test_numbers_a_double_holds_pass(text: str) -> None:
    assert decode_check(check(arguments_json=text))[0].arguments == parse_arguments(text)


def test_empty_arguments_mean_none() -> None:
    assert parse_arguments("") == {}


@pytest.mark.parametrize(
    ("field", "limit"),
    [
        ("tool", MAX_NAME_CHARS),
        ("server", MAX_NAME_CHARS),
        ("grant", MAX_ID_CHARS),
        ("agent_id", MAX_ID_CHARS),
        ("session_id", MAX_ID_CHARS),
        ("call_id", MAX_ID_CHARS),
    ],
)
def test_each_oversize_field_is_named(field: str, limit: int) -> None:
    assert decode_check(check(**{field: "x" * limit}))[0]  # at the limit: fine
    with pytest.raises(InvalidRequest, match=f"^{field} is {limit + 1} characters"):
        decode_check(check(**{field: "x" * (limit + 1)}))


def test_empty_tool_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="tool must not be empty"):
        decode_check(pb.CheckRequest(call_id="c1"))


def test_report_fields_are_checked() -> None:
    ok = pb.ReportRequest(
        call_id="c1", outcome="error", duration_ms=1.5, result_bytes=3, error_type="E"
    )
    assert decode_report(ok) == ("c1", "error", 1.5, 3, "E")
    for bad, message in (
        (pb.ReportRequest(outcome="ok"), "call_id"),
        (pb.ReportRequest(call_id="c1", outcome="maybe"), "outcome"),
        (pb.ReportRequest(call_id="c1", outcome="ok", duration_ms=float("nan")), "duration_ms"),
        (pb.ReportRequest(call_id="c1", outcome="ok", result_bytes=-1), "result_bytes"),
        (pb.ReportRequest(call_id="c1", outcome="ok", error_type="E" * 300), "error_type"),
    ):
        with pytest.raises(InvalidRequest, match=message):
            decode_report(bad)
