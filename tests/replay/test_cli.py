"""``callward replay`` end to end on a real store: answers, formats, gates and exit codes."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from callward.replay.cli import register

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "replay" / "report.schema.json").read_text()
)
pytestmark = pytest.mark.timeout(120)


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """callward"""

    register(app)
    return app


def run(*args: Any) -> Any:
    return CliRunner().invoke(_app(), ["replay", *[str(a) for a in args]])


def json_report(store: dict[str, Path], *extra: Any) -> tuple[int, dict[str, Any]]:
    r = run("--data", store["data"], "--policy", store["candidate"], "--format", "json", *extra)
    report = json.loads(r.stdout)
    jsonschema.validate(report, SCHEMA)
    return r.exit_code, report


def test_known_answers_against_the_recorded_decisions(store: dict[str, Path]) -> None:
    code, report = json_report(store)
    assert code == 0
    assert (report["total"], report["unknown"], report["changed"], report["unchanged"]) == (
        25,
        2,
        7,
        16,
    )
    assert report["unknown_reasons"]["no_decision"] == 1
    assert report["unknown_reasons"]["human_approval"] == 1
    assert [(t["name"], t["count"]) for t in report["transitions"]] == [("allow->deny", 7)]
    examples = report["transitions"][0]["examples"]
    assert len(examples) == 5
    assert examples[0]["to_rule"] == "/tools/pay/deny_if/0"
    assert examples[0]["to_message"] == "payments over 100 need a person"
    assert examples[0]["from_rule"] == "/tools/pay"
    assert report["newly_denied"] == 7
    assert report["most_affected"]["agents"][0] == {
        "name": "bo",
        "changed": 7,
        "newly_denied": 7,
        "newly_allowed": 0,
    }
    assert {r["name"]: r["changed"] for r in report["most_affected"]["rules"]} == {
        "/tools/pay/deny_if/0": 4,
        "/tools/delete/action": 3,
    }
    assert sum(p["count"] for p in report["newly_denied_over_time"]["points"]) == 7
    fid = report["fidelity"]
    assert (fid["share"], fid["replayed"], fid["reproduced"]) == (1.0, 22, 22)
    assert fid["unknown_reasons"]["unknown_policy_version"] == 1


def test_a_policy_baseline_replaces_the_recorded_decisions(store: dict[str, Path]) -> None:
    code, report = json_report(store, "--baseline", store["recorded"])
    assert code == 0
    assert report["baseline"]["kind"] == "policy"
    # With a replayed baseline the human-approved call is comparable; the span without a
    # decision still is not.
    assert report["unknown"] == 1
    assert [(t["name"], t["count"]) for t in report["transitions"]] == [("allow->deny", 7)]


def test_filters_choose_what_is_reported(store: dict[str, Path]) -> None:
    _, report = json_report(store, "--agent", "bo", "--tool", "delete")
    assert report["total"] == 3
    assert report["changed"] == 3
    _, report = json_report(
        store, "--since", "2026-01-01T02:00:00Z", "--until", "2026-01-01T03:00Z"
    )
    assert report["total"] == 3  # the deletes, minutes 120-122
    assert report["range"]["first_call"].startswith("2026-01-01T02:00")


def test_an_empty_range_is_a_report_with_zero_totals(store: dict[str, Path]) -> None:
    code, report = json_report(store, "--since", "2030-01-01")
    assert code == 0
    assert report["total"] == 0
    assert report["fidelity"]["share"] is None
    assert "no recorded calls" in report["message"]


@pytest.mark.parametrize(
    ("gate", "code"),
    [
        ("newly_denied>1%", 1),
        ("newly_denied>50%", 0),
        ("deny->allow>0", 0),
        ("allow->deny>=7", 1),
        ("allow->deny>7", 0),
        ("fidelity<99%", 0),
        ("fidelity<1.0", 0),
        ("unknown>=2", 1),
    ],
)
def test_gates_and_exit_codes(store: dict[str, Path], gate: str, code: int) -> None:
    r = run("--data", store["data"], "--policy", store["candidate"], "--fail-on", gate)
    assert r.exit_code == code, r.output


def test_several_gates_fail_if_any_fails(store: dict[str, Path]) -> None:
    code, report = json_report(store, "--fail-on", "deny->allow>0", "--fail-on", "changed>=7")
    assert code == 1
    assert [g["failed"] for g in report["gates"]] == [False, True]


def test_a_fidelity_gate_fails_when_fidelity_cannot_be_measured(store: dict[str, Path]) -> None:
    r = run(
        "--data",
        store["data"],
        "--policy",
        store["candidate"],
        "--since",
        "2030-01-01",
        "--fail-on",
        "fidelity<99%",
    )
    assert r.exit_code == 1


@pytest.mark.parametrize(
    "gate", ["newly_denied", "bogus>1", "allow->allow>0", "allow->maybe>0", "x" * 500, "changed>-1"]
)
def test_unreadable_gates_are_usage_errors(store: dict[str, Path], gate: str) -> None:
    r = run("--data", store["data"], "--policy", store["candidate"], "--fail-on", gate)
    assert r.exit_code == 2


def test_invalid_candidate_prints_its_validation_report(store: dict[str, Path]) -> None:
    bad = store["tmp"] / "bad.yaml"
    bad.write_text(
        'version: "1"\ntools:\n  pay:\n    limits:\n      - {counter: c, window: week, max: 1}\n'
    )
    r = run("--data", store["data"], "--policy", bad)
    assert r.exit_code == 2
    assert f"{bad}:5:" in r.output
    assert "unknown_window" in r.output


@pytest.mark.parametrize("content", [b"", b"\xff\xfe", b"[1, 2]", b"{" * 10_000])
def test_hostile_candidate_files_are_usage_errors(store: dict[str, Path], content: bytes) -> None:
    bad = store["tmp"] / "hostile.json"
    bad.write_bytes(content)
    assert run("--data", store["data"], "--policy", bad).exit_code == 2


def test_missing_and_empty_data_directories(store: dict[str, Path]) -> None:
    r = run("--data", store["tmp"] / "nope", "--policy", store["candidate"])
    assert r.exit_code == 2
    assert "does not exist" in r.output
    empty = store["tmp"] / "empty"
    empty.mkdir()
    r = run("--data", empty, "--policy", store["candidate"])
    assert r.exit_code == 2
    assert "no recorded tool calls" in r.output


@pytest.mark.parametrize(
    "args",
    [
        ["--since", "yesterday"],
        ["--since", "2026-01-02", "--until", "2026-01-01"],
        ["--format", "pdf"],
    ],
)
def test_bad_options_are_usage_errors(store: dict[str, Path], args: list[str]) -> None:
    assert run("--data", store["data"], "--policy", store["candidate"], *args).exit_code == 2


def test_a_corrupt_parquet_file_is_named_and_can_be_skipped(store: dict[str, Path]) -> None:
    day = next((store["data"] / "tool_calls").iterdir())
    bad = day / "part-corrupt.parquet"
    bad.write_bytes(b"PAR1 this is not parquet at all PAR1")
    r = run("--data", store["data"], "--policy", store["candidate"])
    assert r.exit_code == 2
    assert "part-corrupt.parquet" in r.output
    code, report = json_report(store, "--skip-bad-files")
    assert code == 0
    assert report["total"] == 25
    assert [Path(s["path"]).name for s in report["store"]["skipped_files"]] == [
        "part-corrupt.parquet"
    ]


def test_decisions_out_has_one_row_per_call(store: dict[str, Path]) -> None:
    out = store["tmp"] / "out" / "decisions.parquet"
    r = run("--data", store["data"], "--policy", store["candidate"], "--decisions-out", out)
    assert r.exit_code == 0
    frame = pl.read_parquet(out)
    assert frame.height == 25
    for col in (
        "span_id",
        "call_id",
        "start_time",
        "agent_id",
        "tool",
        "recorded_decision",
        "recorded_rule",
        "replayed_decision",
        "replayed_rule",
    ):
        assert col in frame.columns
    changed = frame.filter(pl.col("recorded_decision") != pl.col("replayed_decision"))
    assert changed.height == 7
    unreplayed = frame.filter(pl.col("replayed_decision").is_null())
    assert unreplayed.get_column("unknown_reason").to_list() == ["no_decision"]
    assert frame.get_column("span_id").n_unique() == 25
    # Plain strings in the file, whatever replay holds them as in memory.
    texts = ("agent_id", "session_id", "server", "tool", "recorded_decision", "recorded_rule")
    schema = pl.read_parquet_schema(out)
    assert {c: schema[c] for c in texts} == dict.fromkeys(texts, pl.String)
    assert schema["replayed_decision"] == pl.String


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts_with_src = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag in ("script", "img", "link") and (a.get("src") or a.get("href")):
            self.scripts_with_src += 1


def test_every_format_parses(store: dict[str, Path]) -> None:
    base = ["--data", store["data"], "--policy", store["candidate"]]
    text = run(*base).stdout
    assert "25 calls: 16 unchanged, 7 changed" in text
    assert "allow" in text and "fidelity 100.00%" in text
    md = run(*base, "--format", "markdown").stdout
    assert "| allow | deny | 7 |" in md
    out = store["tmp"] / "report.html"
    assert run(*base, "--format", "html", "--out", out).exit_code == 0
    page = _Collector()
    page.feed(out.read_text(encoding="utf-8"))
    assert ("svg", {"id": "newly-denied-chart"}) in [(t, {"id": a.get("id")}) for t, a in page.tags]
    assert sum(1 for t, a in page.tags if t == "rect" and a.get("class") == "bar") >= 1
    assert page.scripts_with_src == 0  # standalone: nothing fetched
    embedded = [a for t, a in page.tags if t == "script" and a.get("id") == "report-data"]
    assert embedded


def test_hostile_names_are_escaped_in_markdown_and_html(tmp_path: Path) -> None:
    from callward.enforcer.policy import compile_document
    from tests.replay.recorded import EPOCH_US, Call, simulate_online, write_store

    evil = "<script>alert(1)</script>|x"
    calls = [
        Call(start_us=EPOCH_US, duration_us=1, tool=evil, agent_id=evil, span_id="0000000000000001")
    ]
    recorded = compile_document({"version": "1", "default": "allow"})
    write_store(tmp_path / "d", simulate_online(calls, [(0, recorded)]), [recorded])
    cand = tmp_path / "c.json"
    cand.write_text('{"version": "1", "default": "deny"}')
    base = ["--data", tmp_path / "d", "--policy", cand]
    page = run(*base, "--format", "html").stdout
    assert "<script>alert" not in page
    md = run(*base, "--format", "markdown").stdout
    assert "<script>" not in md
    assert run(*base).exit_code == 0


class _ScriptText(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.inside = tag == "script" and dict(attrs).get("id") == "report-data"

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.text += data

    def handle_endtag(self, tag: str) -> None:
        self.inside = False


def test_html_embeds_the_same_report_as_json(store: dict[str, Path]) -> None:
    base = ["--data", store["data"], "--policy", store["candidate"]]
    as_json = json.loads(run(*base, "--format", "json").stdout)
    page = _ScriptText()
    page.feed(run(*base, "--format", "html").stdout)
    embedded = json.loads(page.text)
    jsonschema.validate(embedded, SCHEMA)
    assert embedded == as_json


def test_arguments_that_are_not_json_are_replayed_not_a_traceback(store: dict[str, Path]) -> None:
    """A foreign writer's arguments column may hold any text; conditions then see no args."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    first = sorted(store["data"].rglob("*.parquet"))[0]
    table = pq.read_table(first)
    i = table.schema.get_field_index("arguments")
    texts = ["{not json", "[1, 2", "\x00", "null"] * table.num_rows
    hostile = table.set_column(
        i, table.schema.field(i), pa.array(texts[: table.num_rows], table.schema.field(i).type)
    )
    first.unlink()
    pq.write_table(hostile, first)
    code, report = json_report(store)
    assert code == 0 and report["total"] == 25, report
