"""Reading the store: time filters, policy files, unreadable arguments, hostile content."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from callward.collector.schema import PARQUET_DIR, TOOL_CALL_SCHEMA
from callward.enforcer.policy import compile_document
from callward.replay import load
from callward.replay.compare import ReplayRequest, compare
from callward.replay.load import StoreError, load_calls, load_recorded_policies, parse_time
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
    misnamed = next(s for s in found.invalid if s.path.endswith("0000.json"))
    assert "not to the file name sha256:0000000000000000.json: refused" in misnamed.reason


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


_texts = st.one_of(
    st.none(),
    st.sampled_from(["", "a", "allow", "/tools/pay", '{"n": 1}', "é"]),
    st.text(max_size=6),
)
_row = st.tuples(st.integers(0, 3_000_000), _texts, _texts, _texts, _texts)


def _write_files(data: Path, rows: list[Any], files: int, without: str | None) -> None:
    """``rows`` (start offset, server, tool, arguments, rule) split over ``files`` files of
    one day; the last file lacks the column ``without`` (an older writer's file)."""
    folder = data / PARQUET_DIR / "date=2026-01-01"
    folder.mkdir(parents=True)
    for f in range(files):
        part = rows[f::files]
        columns: dict[str, Any] = {
            "start_time": [EPOCH_US + r[0] for r in part],
            "end_time": [EPOCH_US + r[0] + 5 for r in part],
            "span_id": [f"{f:02x}{i:014x}" for i in range(len(part))],
            "server": [r[1] for r in part],
            "tool": [r[2] for r in part],
            "arguments": [r[3] for r in part],
            "rule": [r[4] for r in part],
            "decision": ["allow" if r[4] is None else "deny" for r in part],
            "policy_version": ["sha256:0000000000000001"] * len(part),
        }
        schema = TOOL_CALL_SCHEMA
        if without is not None and f == files - 1:
            columns.pop(without)
            schema = schema.remove(schema.get_field_index(without))
        table = pa.Table.from_pydict(
            {k: v for k, v in columns.items()},
            schema=pa.schema([schema.field(k) for k in columns]),
        )
        pq.write_table(table, folder / f"part-{f}.parquet")


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(_row, min_size=1, max_size=30),
    files=st.integers(1, 3),
    without=st.sampled_from([None, "server", "arguments", "rule"]),
    since=st.one_of(st.none(), st.integers(0, 3_000_000)),
    until=st.one_of(st.none(), st.integers(0, 3_000_000)),
    many=st.sampled_from([0, 1 << 16]),
)
def test_dictionary_columns_read_by_pyarrow_equal_polars_reading_every_text(
    rows: list[Any],
    files: int,
    without: str | None,
    since: int | None,
    until: int | None,
    many: int,
) -> None:
    """The fast path (Parquet dictionaries kept by pyarrow, the rest by Polars) loads
    exactly what Polars alone loads, nulls, empty texts, time filters and older files
    without a column included; and when the two readers disagree, Polars alone is used."""
    times = {
        "since": None if since is None else datetime.fromtimestamp((EPOCH_US + since) / 1e6, UTC),
        "until": None if until is None else datetime.fromtimestamp((EPOCH_US + until) / 1e6, UTC),
    }
    # ``many``: 0 reads every column with more dictionary entries than half its rows
    # as strings (as a store of mostly distinct texts is read).
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(load, "_MANY_ENTRIES", many):
        data = Path(tmp)
        _write_files(data, rows, files, without)
        with mock.patch.object(load, "_scan", wraps=load._scan) as scan:
            fast = load_calls(data, **times).frame
        # The fast path was taken: Polars never read the dictionary columns.
        assert [c.kwargs.get("with_dictionary_columns") for c in scan.call_args_list] == [False]
        with mock.patch.object(load, "_read_dictionaries", side_effect=pa.ArrowInvalid("no")):
            alone = load_calls(data, **times).frame
        real = load._read_dictionaries
        with mock.patch.object(
            load,
            "_read_dictionaries",
            lambda files: real(files).with_columns(pl.col("start_us") + 1),
        ):
            misaligned = load_calls(data, **times).frame
        with mock.patch.object(  # pyarrow returning fewer rows than the files hold
            load, "_read_dictionaries", lambda files: real(files).head(len(rows) - 1)
        ):
            short = load_calls(data, **times).frame
    texts = pl.col(pl.Categorical).cast(pl.String)  # the same texts, however held
    assert_frame_equal(fast.with_columns(texts), alone.with_columns(texts))
    assert_frame_equal(misaligned.with_columns(texts), alone.with_columns(texts))
    assert_frame_equal(short.with_columns(texts), alone.with_columns(texts))
    if many:
        assert set(load.DICTIONARY_COLUMNS) <= {
            c for c, t in fast.schema.items() if t == pl.Categorical
        }
    kept = [
        (i, r)
        for i, r in enumerate(rows)
        if (since is None or r[0] >= since) and (until is None or r[0] < until)
    ]
    assert sorted(fast.get_column("start_us").to_list()) == sorted(EPOCH_US + r[0] for _, r in kept)
    lacking = {i for i, _ in kept if without == "arguments" and i % files == files - 1}
    args = ["{}" if i in lacking or r[3] in (None, "") else r[3] for i, r in kept]
    assert sorted(fast.get_column("arguments").cast(pl.String).to_list()) == sorted(args)


def test_calls_without_a_start_time_are_an_error_or_left_out(store: dict[str, Path]) -> None:
    """A hand-made file may hold rows the collector never writes: no traceback, a clear
    error naming the file, or with skip_bad_files the rest of the store."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = store["data"]
    first = sorted(data.rglob("*.parquet"))[0]
    table = pq.read_table(first)
    whole = load_calls(data).frame.height
    i = table.schema.get_field_index("start_time")
    times = table.column(i).to_pylist()
    times[0] = None
    field = pa.field("start_time", table.schema.field(i).type, nullable=True)
    hostile = table.set_column(i, field, pa.array(times, field.type))
    pq.write_table(hostile, first.with_name("hand-made.parquet"))
    with pytest.raises(StoreError, match=r"without a start_time in .*hand-made\.parquet"):
        load_calls(data)
    loaded = load_calls(data, skip_bad_files=True)
    assert loaded.frame.height == whole + table.num_rows - 1
    assert [Path(s.path).name for s in loaded.skipped] == ["hand-made.parquet"]
