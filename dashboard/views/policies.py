"""Policies: every policy version the store knows, when each decided calls, and what changed
between two of them."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from callward.dashboard import context, policy_documents, queries, widgets
from callward.dashboard.queries import QueryError

ctx = context.page("Policies", "The policy versions recorded, and the difference between two.")


def render() -> None:
    usage = queries.policy_usage(ctx.data_dir)
    documents = policy_documents.load_all(ctx.data_dir)
    by_version = {d.version: d for d in documents}
    known = pd.DataFrame(
        {
            "policy_version": [d.version for d in documents],
            "file": [d.path.name for d in documents],
            "problem": [d.problem for d in documents],
        }
    )
    table = known.merge(usage, on="policy_version", how="outer")
    table = table.sort_values("first_seen", ascending=False, na_position="last")
    cols = st.columns(2)
    cols[0].metric("Versions that decided calls", f"{len(usage):,}")
    cols[1].metric("Documents kept", f"{len(documents):,}")
    st.subheader("Versions")
    widgets.table(table, "policy-versions")

    readable = [d.version for d in documents if d.document is not None]
    st.subheader("Compare two versions")
    if len(readable) < 2:
        st.info(
            "At least two policy documents are needed for a diff; the collector keeps one "
            "per version it sees under `policies/` in the data directory."
        )
        for doc in documents:
            with st.expander(doc.version):
                st.code(doc.pretty or doc.problem, language="json")
        return
    left, right = st.columns(2)
    old = left.selectbox("Older", readable, index=len(readable) - 2, key="policy_old")
    new = right.selectbox("Newer", readable, index=len(readable) - 1, key="policy_new")
    if old == new:
        st.info("Pick two different versions.")
        return
    text = policy_documents.diff(by_version[old], by_version[new])
    st.code(text or "(no difference)", language="diff")
    st.download_button("Download diff", text.encode(), file_name="policy.diff", mime="text/x-diff")


try:
    render()
except QueryError as error:
    widgets.query_error(error)
