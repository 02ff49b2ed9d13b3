"""``callward audit verify``: an intact store verifies; each kind of tampering with the real
writer's Parquet files is found at the right place."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from callward.cli import app
from callward.collector.audit import verify_store
from callward.collector.chain import LINK_KEY
from callward.record import heads_path, partition_dir
from tests.collector.chained_store import (
    chain_files,
    copy_in,
    dates,
    delete_row,
    edit_value,
    swap_rows,
    write_batches,
)

runner = CliRunner()
SIZES = [4, 3, 5, 2, 6]  # one day 22:00 to the next day 02:00: two partitions, 2 and 3 files


@pytest.fixture
def store(tmp_path: Path) -> Path:
    write_batches(tmp_path / "d", SIZES)
    return tmp_path / "d"


def only_break(data: Path):
    report = verify_store(data)
    assert not report.ok
    broken = [p for p in report.partitions if p.broken is not None]
    assert len(broken) == 1, [p.broken for p in broken]
    return broken[0].date, broken[0].broken


def test_an_intact_store_verifies(store: Path) -> None:
    report = verify_store(store)
    assert report.ok, report.to_json()
    assert [p.status for p in report.partitions] == ["intact", "intact"]
    assert sum(p.rows for p in report.partitions) == sum(SIZES)
    assert [p.chained_files for p in report.partitions] == [2, 3]


def test_an_edited_value_is_found_at_its_row(store: Path) -> None:
    day = dates(store)[1]
    target = chain_files(store, day)[0]
    edit_value(target, 2)
    date, b = only_break(store)
    assert (date, b.kind, b.file, b.row) == (day, "row_changed", str(target.relative_to(store)), 2)
    row = pq.read_table(target).slice(2, 1).to_pylist()[0]
    assert (b.trace_id, b.span_id) == (row["trace_id"], row["span_id"])
    assert b.start_time == row["start_time"].isoformat()
    # this file from row 2 on (5 rows), and the two files after it (2 and 6 rows)
    assert (b.untrusted_files, b.untrusted_rows) == (3, 3 + 2 + 6)
    assert f"row 2 of {target.name} onwards" in b.covers


def test_a_value_edited_to_null_is_found(store: Path) -> None:
    target = chain_files(store, dates(store)[0])[0]
    table = pq.read_table(target)
    message = table.column("message").to_pylist()
    assert message[1] == ""  # stored as "", so null is a different value
    edit_value(target, 1, "message", None)  # type: ignore[arg-type]
    assert only_break(store)[1].row == 1


def test_a_deleted_row_breaks_at_the_row_after_it(store: Path) -> None:
    target = chain_files(store, dates(store)[0])[0]
    delete_row(target, 1)
    _, b = only_break(store)
    assert (b.kind, b.row, b.file) == ("row_changed", 1, str(target.relative_to(store)))


def test_a_deleted_last_row_is_rows_missing(store: Path) -> None:
    target = chain_files(store, dates(store)[0])[0]
    n = pq.read_metadata(target).num_rows
    delete_row(target, n - 1)
    _, b = only_break(store)
    assert (b.kind, b.row, b.file) == ("rows_missing", n - 1, str(target.relative_to(store)))


def test_two_swapped_rows_break_at_the_first(store: Path) -> None:
    target = chain_files(store, dates(store)[1])[2]
    swap_rows(target, 1, 3)
    _, b = only_break(store)
    assert (b.kind, b.row, b.file) == ("row_changed", 1, str(target.relative_to(store)))


def test_a_deleted_file_is_found_at_the_file_after_it(store: Path) -> None:
    day = dates(store)[1]
    files = chain_files(store, day)
    files[1].unlink()
    date, b = only_break(store)
    assert (date, b.kind, b.file) == (day, "missing_file", str(files[2].relative_to(store)))
    assert "place 1" in b.message and b.covers.startswith("the rows of the missing file(s)")


def test_a_deleted_last_file_is_a_truncated_tail(store: Path) -> None:
    day = dates(store)[1]
    files = chain_files(store, day)
    files[-1].unlink()
    date, b = only_break(store)
    assert (date, b.kind, b.file) == (day, "truncated_tail", files[-1].name)


def test_a_deleted_partition_is_a_truncated_tail(store: Path) -> None:
    day = dates(store)[0]
    for path in chain_files(store, day):
        path.unlink()
    partition_dir(store, day).rmdir()
    date, b = only_break(store)
    assert (date, b.kind) == (day, "truncated_tail")


@pytest.mark.parametrize(
    ("foreign_files", "kind"),
    [(1, "duplicate_file"), (2, "duplicate_file"), (3, "bad_prev"), (5, "beyond_head")],
)
def test_a_file_copied_in_from_another_store_is_named(
    store: Path, tmp_path: Path, foreign_files: int, kind: str
) -> None:
    """Whatever place the copy claims (the first, a taken one, the next one, past the
    head), it is the copy that is reported, not a file of the trail (whose first
    partition holds places 0 and 1)."""
    write_batches(tmp_path / "other", [2] * foreign_files, tag="other-", spread=0.3)
    day = dates(store)[0]
    source = chain_files(tmp_path / "other", day)[-1]
    copied = copy_in(source, partition_dir(store, day))
    date, b = only_break(store)
    assert (date, b.kind, b.file) == (day, kind, str(copied.relative_to(store)))


def test_a_file_moved_from_another_partition_is_named(store: Path) -> None:
    first, second = dates(store)
    source = chain_files(store, first)[0]
    moved = partition_dir(store, second) / source.name
    source.rename(moved)
    report = verify_store(store)
    by_date = {p.date: p.broken for p in report.partitions}
    assert by_date[first] is not None and by_date[first].kind == "missing_file"
    assert by_date[second] is not None and by_date[second].file == str(moved.relative_to(store))


def test_a_lost_head_record_is_reported(store: Path) -> None:
    heads_path(store).unlink()
    report = verify_store(store)
    assert not report.ok
    assert {p.broken.kind for p in report.partitions if p.broken} == {"head_stale"}


def test_an_edited_head_record_is_reported(store: Path) -> None:
    path = heads_path(store)
    heads = json.loads(path.read_text())
    day = dates(store)[0]
    heads["partitions"][day]["last"] = "0" * 64
    path.write_text(json.dumps(heads))
    date, b = only_break(store)
    assert (date, b.kind) == (day, "head_changed")


def test_a_head_record_not_in_the_writers_form_is_a_store_problem(store: Path) -> None:
    heads_path(store).write_text('{"version": 1, "partitions": {"../x": {}}}')
    report = verify_store(store)
    assert not report.ok and report.problems and "not a head record" in report.problems[0]


# ---------------------------------------------------------------- one random tampering


TAMPERINGS = ["edit", "delete_row", "swap", "delete_file", "copy_in"]


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=6),
    kind=st.sampled_from(TAMPERINGS),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_single_tampering_is_found_where_it_was_made(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], kind: str, seed: int
) -> None:
    rng = random.Random(seed)
    data = tmp_path_factory.mktemp("store")
    write_batches(data, sizes, spread=rng.choice([0.5, 1, 3]))
    assert verify_store(data).ok
    day = rng.choice(dates(data))
    files = chain_files(data, day)
    at = rng.randrange(len(files))
    target = files[at]
    n = pq.read_metadata(target).num_rows
    if kind == "swap" and n < 2:
        kind = "edit"
    expected_file = str(target.relative_to(data))
    if kind == "edit":
        edit_value(target, rng.randrange(n))
    elif kind == "delete_row":
        delete_row(target, rng.randrange(n))
    elif kind == "swap":
        i, j = sorted(rng.sample(range(n), 2))
        swap_rows(target, i, j)
    elif kind == "delete_file":
        target.unlink()
        expected_file = (
            target.name if at == len(files) - 1 else str(files[at + 1].relative_to(data))
        )
    else:
        other = tmp_path_factory.mktemp("other")
        write_batches(other, [rng.randint(1, 4) for _ in range(rng.randint(1, 4))], tag="x")
        source = rng.choice([p for d in dates(other) for p in chain_files(other, d)])
        expected_file = str(copy_in(source, partition_dir(data, day)).relative_to(data))
    date, b = only_break(data)
    assert date == day
    assert b.file == expected_file, (kind, b)


# ---------------------------------------------------------------- the command


def test_the_command_exits_0_on_an_intact_store(store: Path) -> None:
    result = runner.invoke(app, ["audit", "verify", str(store)])
    assert result.exit_code == 0, result.output
    assert "intact" in result.output and "broken" not in result.output


def test_the_command_names_the_break_and_exits_1(store: Path) -> None:
    target = chain_files(store, dates(store)[0])[1]
    edit_value(target, 0)
    result = runner.invoke(app, ["audit", "verify", "--data", str(store)])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "row_changed" in text and f"{target.name}, row 0" in text and "covers" in text


def test_the_command_prints_json(store: Path) -> None:
    swap_rows(chain_files(store, dates(store)[1])[0], 0, 1)
    result = runner.invoke(app, ["audit", "verify", str(store), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["ok"] is False
    statuses = [p["status"] for p in report["partitions"]]
    assert statuses == ["intact", "broken"]
    assert report["partitions"][1]["break"]["row"] == 0


def test_the_command_refuses_a_missing_store(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    result = runner.invoke(app, ["audit", "verify", missing], env={"COLUMNS": "250"})
    assert result.exit_code == 2 and "does not exist" in result.output
    assert runner.invoke(app, ["audit", "verify"], env={"CALLWARD_DATA": ""}).exit_code == 2


def test_a_file_that_does_not_open_is_named(store: Path) -> None:
    target = chain_files(store, dates(store)[0])[1]
    target.write_bytes(target.read_bytes()[:100])
    _, b = only_break(store)
    assert (b.kind, b.file) == ("unreadable", str(target.relative_to(store)))


def test_a_link_not_in_the_writers_form_is_named(store: Path) -> None:
    target = chain_files(store, dates(store)[0])[0]
    table = pq.read_table(target)
    pq.write_table(table.replace_schema_metadata({LINK_KEY: b'{"seq": -1}'}), target)
    _, b = only_break(store)
    assert (b.kind, b.file) == ("bad_link", str(target.relative_to(store)))


def test_a_chained_file_missing_a_column_is_named(store: Path) -> None:
    target = chain_files(store, dates(store)[1])[1]
    pq.write_table(pq.read_table(target).drop_columns(["message"]), target)
    _, b = only_break(store)
    assert (b.kind, b.file) == ("bad_columns", str(target.relative_to(store)))
    assert "message" in b.message
