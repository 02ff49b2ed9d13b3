"""The dashboard's entry point (``streamlit run dashboard/app.py -- --data D``).

It resolves the data directory, draws the sidebar (store stats and the cross-page filters)
and hands over to the page picked in the navigation. Pages only lay out; every figure comes
from :mod:`dashboard.queries`.
"""

from __future__ import annotations

import streamlit as st

from callward.dashboard import context, filters, queries, settings, widgets
from callward.dashboard.queries import QueryError

st.set_page_config(page_title="callward", page_icon=":material/shield:", layout="wide")

# The page scripts live in views/, not pages/: Streamlit treats a pages/ folder next to the
# entry script as its older automatic multipage mode, which bypasses this entry script.
PAGES = [
    st.Page("views/overview.py", title="Overview", icon=":material/monitoring:", default=True),
    st.Page(
        "views/runaway.py",
        title="Runaway agents",
        icon=":material/directions_run:",
        url_path="runaway",
    ),
    st.Page(
        "views/exfiltration.py",
        title="Exfiltration",
        icon=":material/upload:",
        url_path="exfiltration",
    ),
    st.Page("views/sessions.py", title="Sessions", icon=":material/search:", url_path="sessions"),
    st.Page("views/replay.py", title="Replay", icon=":material/history:", url_path="replay"),
    st.Page("views/policies.py", title="Policies", icon=":material/policy:", url_path="policies"),
]

navigation = st.navigation(PAGES)
st.sidebar.title("callward")

data_dir = settings.data_dir()
if data_dir is None:
    st.error(
        "No data directory given. Start the dashboard with `callward dashboard --data D`.",
        icon=":material/block:",
    )
    st.stop()
elif not data_dir.is_dir():
    st.error(
        f"The data directory `{data_dir}` does not exist. Point `--data` at a store written "
        "by `callward collector` or `callward datasets generate`.",
        icon=":material/block:",
    )
    st.stop()

key = str(data_dir.resolve())
try:
    with st.spinner(
        "Summarising new Parquet files (the first open of a large store takes a while)…"
    ):
        queries.prepare(key)
    summary = queries.store_summary(key)
    options = queries.filter_options(key) if summary["calls"] else {}
except QueryError as error:
    widgets.query_error(error)
    st.stop()
widgets.store_stats(summary)
flt = filters.sidebar(summary, options)
context.publish(key, summary, flt)
navigation.run()
