"""The labels file round-trips and appends."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from callward.datasets.labels import LABELS_FILE, Label, read_labels, write_labels


def label(i: int, session: str = "") -> Label:
    t = datetime(2026, 1, 5, 10, i, tzinfo=UTC)
    return Label(
        f"s0-{i:05d}",
        "runaway",
        "ping_pong",
        "coder-01",
        "coder-01",
        session,
        "ab" * 16,
        ("0" * 16, "1" * 16),
        t,
        t,
    )


def test_roundtrip_and_append(tmp_path: Path) -> None:
    write_labels(tmp_path, [label(1, "sess_1")])
    write_labels(tmp_path, [label(2)])
    got = read_labels(tmp_path)
    assert got == [label(1, "sess_1"), label(2)]
    assert got[0].session_key == "sess_1" and got[1].session_key == "ab" * 16
    assert len((tmp_path / LABELS_FILE).read_text().splitlines()) == 2


def test_no_labels_file_means_no_labels(tmp_path: Path) -> None:
    assert read_labels(tmp_path) == []
