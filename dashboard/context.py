"""What every page needs to know, set once per run by app.py: the data directory, the
store's summary and the active filter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st

from callward.dashboard import filters, widgets
from callward.dashboard.queries import CallFilter

KEY = "page_context"


@dataclass(frozen=True)
class PageContext:
    data_dir: str
    summary: dict[str, Any]
    flt: CallFilter


def publish(data_dir: str, summary: dict[str, Any], flt: CallFilter) -> None:
    st.session_state[KEY] = PageContext(data_dir, summary, flt)


def page(title: str, intro: str) -> PageContext:
    """Start a page: its title and what it shows; stop with the empty state if no calls."""
    st.title(title)
    ctx = st.session_state.get(KEY)
    if not isinstance(ctx, PageContext):
        st.error("The page was opened without the dashboard; start it with `callward dashboard`.")
        st.stop()
    st.caption(f"{intro} Showing {filters.describe(ctx.flt)}.")
    if ctx.summary["calls"] == 0:
        widgets.empty_store(ctx.data_dir)
        st.stop()
    return ctx
