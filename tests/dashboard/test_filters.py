"""Turning the sidebar's choices into a filter."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as s

from callward.dashboard.filters import ALIGN_FROM, PRESETS, describe, resolve

FIRST = datetime(2026, 3, 2, tzinfo=UTC)


@given(
    s.sampled_from(list(PRESETS)),
    s.timedeltas(min_value=timedelta(0), max_value=timedelta(days=60)),
)
def test_every_preset_stays_inside_the_store(preset: str, span: timedelta) -> None:
    last = FIRST + span
    flt = resolve(preset, FIRST, last)
    assert flt.start is not None and flt.end is not None
    assert FIRST <= flt.start < flt.end
    assert flt.end > last  # the latest span itself is included (half-open range)
    width = PRESETS[preset]
    if width is not None:
        assert flt.end - flt.start <= width + timedelta(hours=1)
        if flt.start > FIRST and width >= ALIGN_FROM:
            assert flt.start.minute == flt.start.second == flt.start.microsecond == 0


def test_custom_dates_cover_whole_days() -> None:
    flt = resolve("Custom dates", FIRST, FIRST + timedelta(days=5), (date(2026, 3, 3),) * 2)
    assert flt.start == datetime(2026, 3, 3, tzinfo=UTC)
    assert flt.end == datetime(2026, 3, 4, tzinfo=UTC)


def test_an_empty_store_gives_an_open_range() -> None:
    flt = resolve("Last hour", None, None, agents=("a",))
    assert flt.start is None and flt.end is None and flt.agents == ("a",)


def test_describe_names_every_active_filter() -> None:
    flt = resolve("All data", FIRST, FIRST + timedelta(hours=2), (), ("a1",), (), ("t1", "t2"))
    text = describe(flt)
    assert "a1" in text and "t1, t2" in text and "2026-03-02 00:00" in text
