"""AppTest runs of every page on the fixture store, the empty store and a missing directory."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.compute as pc
import pytest
from streamlit.testing.v1 import AppTest

from callward.paths import DATA_ENV
from tests.dashboard.conftest import APP
from tests.dashboard.store_fixture import EXFIL_HOST, EXFIL_SESSION, FixtureStore

PAGES = (
    "views/overview.py",
    "views/runaway.py",
    "views/exfiltration.py",
    "views/sessions.py",
    "views/replay.py",
    "views/policies.py",
)
TIMEOUT_S = 90


def start(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> AppTest:
    monkeypatch.setenv(DATA_ENV, str(data_dir))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    at.run()
    return at


def on_page(at: AppTest, page: str) -> AppTest:
    if page != PAGES[0]:
        at.switch_page(page).run()
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def no_failure(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def all_text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [i.value for i in at.info] + [s.value for s in at.success]
    return "\n".join(str(p) for p in parts)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_without_error(
    monkeypatch: pytest.MonkeyPatch, fixture_store: FixtureStore, page: str
) -> None:
    at = on_page(start(monkeypatch, fixture_store.data_dir), page)
    no_failure(at)
    assert at.title and at.title[0].value  # the page laid itself out


@pytest.mark.timeout(120)
def test_overview_shows_the_store_figures(
    monkeypatch: pytest.MonkeyPatch, fixture_store: FixtureStore
) -> None:
    at = start(monkeypatch, fixture_store.data_dir)
    no_failure(at)
    table = fixture_store.table
    decisions = table.column("decision")
    denied = pc.sum(pc.equal(decisions, "deny")).as_py()
    figures = metrics(at)
    assert figures["Calls"] == f"{table.num_rows:,}"
    assert figures["Denied"] == f"{denied:,}"
    assert figures["Deny rate"] == f"{denied / table.num_rows:.1%}"
    agents = len(set(table.column("agent_id").to_pylist()))
    errors = table.column("outcome").to_pylist().count("error")
    assert figures["Agents · errors"] == f"{agents:,} · {errors:,}"
    sidebar = "\n".join(m.value for m in at.sidebar.markdown)
    assert f"**{table.num_rows:,}** calls" in sidebar
    assert "Latest span" in sidebar


@pytest.mark.timeout(120)
def test_filters_apply_across_pages(
    monkeypatch: pytest.MonkeyPatch, fixture_store: FixtureStore
) -> None:
    at = start(monkeypatch, fixture_store.data_dir)
    at.sidebar.multiselect(key="filter_agents").set_value(["planner"]).run()
    no_failure(at)
    planner = pc.sum(pc.equal(fixture_store.table.column("agent_id"), "planner")).as_py()
    assert metrics(at)["Calls"] == f"{planner:,}"
    at.switch_page("views/exfiltration.py").run()
    no_failure(at)
    # The planner only reads local files: no destination, no secret under this filter.
    assert metrics(at)["Destinations"] == "0"
    assert metrics(at)["Secrets redacted"] == "0"


@pytest.mark.timeout(120)
def test_exfiltration_counts_destinations_and_redactions(
    monkeypatch: pytest.MonkeyPatch, fixture_store: FixtureStore
) -> None:
    at = on_page(start(monkeypatch, fixture_store.data_dir), "views/exfiltration.py")
    no_failure(at)
    arguments = fixture_store.table.column("arguments").to_pylist()
    markers = sum(a.count("[REDACTED:") for a in arguments)
    assert metrics(at)["Secrets redacted"] == f"{markers:,}"
    frames = [d.value for d in at.dataframe]
    destinations = next(f for f in frames if "destination" in f.columns)
    assert EXFIL_HOST in set(destinations["destination"])
    # Ordered by first use: the exfiltration host is the newest one.
    assert destinations["destination"].iloc[-1] == EXFIL_HOST


@pytest.mark.timeout(120)
def test_sessions_page_opens_the_linked_session(
    monkeypatch: pytest.MonkeyPatch, fixture_store: FixtureStore
) -> None:
    at = start(monkeypatch, fixture_store.data_dir)
    at.query_params["session"] = EXFIL_SESSION
    at.switch_page("views/sessions.py").run()
    no_failure(at)
    table = fixture_store.table
    in_session = [s == EXFIL_SESSION for s in table.column("session_id").to_pylist()]
    assert metrics(at)["Calls"] == f"{sum(in_session):,}"
    shown = next(d.value for d in at.dataframe if "tool" in d.value.columns)
    assert list(shown["tool"]) == ["read_file", "read_file", "http_post"]
    assert list(shown["decision"]) == ["allow", "allow", "deny"]
    assert "[REDACTED:private_key]" in shown["arguments"].iloc[-1]


@pytest.mark.timeout(120)
def test_policies_page_diffs_two_versions(
    monkeypatch: pytest.MonkeyPatch, fixture_store: FixtureStore
) -> None:
    at = on_page(start(monkeypatch, fixture_store.data_dir), "views/policies.py")
    no_failure(at)
    assert metrics(at)["Versions that decided calls"] == "2"
    diff = next(c.value for c in at.code if c.language == "diff")
    assert '+    "http_post": {' in diff
    assert fixture_store.versions[0] in diff and fixture_store.versions[1] in diff


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "text",
    [
        '{"version": "1", "default": "maybe"}',
        "{not json at all",
        '{"version": "1", "default": "deny", "tools": {"x": {"deny_if": [{"conditions":'
        ' [{"path": "args.a", "op": "regex", "value": "("}]}]}}}',
        "\x00" * 64,
    ],
)
def test_an_invalid_pasted_policy_shows_its_validation_report(
    monkeypatch: pytest.MonkeyPatch, fixture_store: FixtureStore, text: str
) -> None:
    at = on_page(start(monkeypatch, fixture_store.data_dir), "views/replay.py")
    at.text_area(key="replay_text").input(text).run()
    at.button(key="replay_run").click().run()
    assert not at.exception
    assert at.error and "invalid" in at.error[0].value
    report = next(c.value for c in at.code if "<pasted>" in c.value)
    assert report.strip(), "the validation report is on the page"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("page", PAGES)
def test_an_empty_store_says_how_to_get_data_in(
    monkeypatch: pytest.MonkeyPatch, empty_store: Path, page: str
) -> None:
    at = on_page(start(monkeypatch, empty_store), page)
    no_failure(at)
    text = "\n".join(i.value for i in at.info)
    assert "callward collector" in text and "callward datasets generate" in text


@pytest.mark.timeout(120)
def test_a_missing_data_directory_is_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    at = start(monkeypatch, tmp_path / "nowhere")
    assert not at.exception
    assert at.error and "does not exist" in at.error[0].value


def run_until(at: AppTest, ready: Callable[[AppTest], bool], tries: int = 60) -> AppTest:
    """Re-run until the detectors' background result has reached the page."""
    for _ in range(tries):
        if ready(at):
            return at
        time.sleep(0.5)
        at.run()
    raise AssertionError("the page never showed the detectors' result")


@pytest.mark.timeout(180)
def test_findings_reach_the_pages_with_links_to_their_sessions(
    monkeypatch: pytest.MonkeyPatch, fixture_store: FixtureStore
) -> None:
    at = on_page(start(monkeypatch, fixture_store.data_dir), "views/exfiltration.py")
    run_until(at, lambda a: metrics(a).get("Exfiltration findings", "—") not in ("—", "0"))
    no_failure(at)
    assert EXFIL_HOST in all_text(at)  # the finding's explanation names the host
    assert at.get("page_link"), "each finding links to its session"
    at.switch_page("views/runaway.py").run()
    run_until(at, lambda a: "Runaway findings" in metrics(a))
    no_failure(at)
    assert int(metrics(at)["Runaway findings"]) >= 1
    assert "runaway-bot" in all_text(at)


@pytest.mark.timeout(120)
def test_a_valid_candidate_is_replayed_on_the_page(
    monkeypatch: pytest.MonkeyPatch, fixture_store: FixtureStore
) -> None:
    at = on_page(start(monkeypatch, fixture_store.data_dir), "views/replay.py")
    candidate = {"version": "1", "default": "allow", "tools": {"fetch": {"action": "deny"}}}
    at.text_area(key="replay_text").input(json.dumps(candidate)).run()
    at.button(key="replay_run").click().run()
    no_failure(at)
    table = fixture_store.table
    tools, decisions = table.column("tool").to_pylist(), table.column("decision").to_pylist()
    newly_denied = sum(t == "fetch" and d == "allow" for t, d in zip(tools, decisions, strict=True))
    figures = metrics(at)
    assert figures["Calls replayed"] == f"{table.num_rows:,}"
    assert figures["Newly denied"] == f"{newly_denied:,}"
    transitions = next(d.value for d in at.dataframe if "name" in d.value.columns)
    assert "allow->deny" in set(transitions["name"])
    # The page names the range it replayed: by default every recorded call.
    first = min(table.column("start_time").to_pylist())
    assert f"**Range replayed:** {first:%Y-%m-%d %H:%M} → " in all_text(at)
    assert "All data by default" in all_text(at)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("first", "last", "found"),
    [
        ("2026-03-02", "2026-03-04", True),
        ("not-a-date", "", True),  # a malformed hint is ignored, not an error
        ("2026-03-02", "2026-03-02", False),  # the session's day is outside the hint
    ],
)
def test_a_link_reads_only_the_days_it_names(
    monkeypatch: pytest.MonkeyPatch,
    fixture_store: FixtureStore,
    first: str,
    last: str,
    found: bool,
) -> None:
    at = start(monkeypatch, fixture_store.data_dir)
    at.query_params.update({"session": EXFIL_SESSION, "from": first, "to": last})
    at.switch_page("views/sessions.py").run()
    assert not at.exception
    if found:
        assert metrics(at)["Calls"] == "3"
    else:
        assert at.warning and "No call recorded" in at.warning[0].value
