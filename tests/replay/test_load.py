"""Reading the store: time filters, policy files, unreadable arguments, hostile content."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from enforcer.policy import compile_document
from replay.compare import ReplayRequest, compare
from replay.load import StoreError, load_calls, load_recorded_policies, parse_time
from tests.replay.recorded import EPOCH_US, Call, simulate_online, write_store

POLICY = compile_document(
    {
        "version": "1",
        "default": "allow",
        "tools": {
            "pay": {"deny_if": [{"conditions": [{"path": "args.n", "op": "gt", "value": 1}]}]}
        },
    }
)


def _store(tmp_path: Path, arguments: list[str], tool: str = "pay") -> Path:
    calls = [
        Call(start_us=EPOCH_US + i * 1_000_000, duration_us=1, tool=tool, span_id=f"{i + 1:016x}")
        for i in range(len(arguments))
    ]
    records = simulate_online(calls, [(0, POLICY)])
    for r, text in zip(records, arguments, strict=True):
        r["arguments"] = text
    data = tmp_path / "d"
    write_store(data, records, [POLICY])
    return data


@pytest.mark.parametrize("text", ["{bad", "[1, 2]", '"just a string"', "{" * 5000])
def test_unreadable_arguments_are_unknown_where_a_condition_reads_them(
    tmp_path: Path, text: str
) -> None:
    data = _store(tmp_path, ['{"n": 5}', text, ""])
    calls = compare(ReplayRequest(data_dir=data, candidate=POLICY)).calls.sort("start_us")
    assert calls.get_column("unknown_reason").to_list() == [None, "unreadable_arguments", None]
    assert calls.get_column("r_decision").to_list() == ["deny", None, "allow"]


def test_unreadable_arguments_do_not_matter_where_nothing_reads_them(tmp_path: Path) -> None:
    data = _store(tmp_path, ["{bad"], tool="read")
    calls = compare(ReplayRequest(data_dir=data, candidate=POLICY)).calls
    assert calls.get_column("r_decision").to_list() == ["allow"]


def test_time_filters_are_half_open(tmp_path: Path) -> None:
    data = _store(tmp_path, ["{}"] * 5)
    since = datetime.fromtimestamp((EPOCH_US + 1_000_000) / 1e6, tz=UTC)
    until = datetime.fromtimestamp((EPOCH_US + 3_000_000) / 1e6, tz=UTC)
    frame = load_calls(data, since=since, until=until).frame
    assert sorted(frame.get_column("start_us").to_list()) == [
        EPOCH_US + 1_000_000,
        EPOCH_US + 2_000_000,
    ]


def test_policy_files_that_do_not_load_or_do_not_match_their_name_are_listed(
    tmp_path: Path,
) -> None:
    data = _store(tmp_path, ["{}"])
    folder = data / "policies"
    (folder / "sha256:0000000000000000.json").write_text('{"version": "1"}')
    (folder / "broken.json").write_text('{"version": "2", "tools": []}')
    found = load_recorded_policies(data)
    assert list(found.by_version) == [POLICY.version]
    assert sorted(Path(s.path).name for s in found.invalid) == [
        "broken.json",
        "sha256:0000000000000000.json",
    ]


def test_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        load_calls(tmp_path / "absent")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01T02:00Z", datetime(2026, 1, 1, 2, tzinfo=UTC)),
        ("2026-01-01T03:00+01:00", datetime(2026, 1, 1, 2, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01", "1" * 1000])
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)
