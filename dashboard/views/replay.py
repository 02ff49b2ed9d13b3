"""Replay: what a candidate policy would have decided on the recorded calls, next to what was
decided, without leaving the page. Replay itself is the replay package's; this page only picks
the candidate, validates it with the enforcer's loader and lays out the report."""

from __future__ import annotations

import streamlit as st

from callward.dashboard import context, policy_documents, replay_report, widgets
from callward.dashboard.queries import QueryError
from callward.enforcer.errors import PolicyInvalid
from callward.enforcer.policy import MAX_POLICY_BYTES, compile_text

ctx = context.page(
    "Replay",
    "Re-decide the recorded calls under a candidate policy and see what would change.",
)
KEY_CANDIDATE = "replay_candidate"
SOURCES = ("Paste a policy", "Upload a file", "A recorded version")


def pick_candidate() -> tuple[str, str] | None:
    """The candidate's name and text, from whichever source the operator chose."""
    source = st.radio("Candidate policy", SOURCES, horizontal=True, key="replay_source")
    if source == SOURCES[0]:
        text = st.text_area(
            "Policy (JSON or YAML)",
            height=220,
            key="replay_text",
            placeholder='{"version": "1", "default": "allow", "tools": {...}}',
        )
        return ("<pasted>", text) if text.strip() else None
    if source == SOURCES[1]:
        upload = st.file_uploader("Policy file", type=["json", "yaml", "yml"], key="replay_file")
        if upload is None:
            return None
        if upload.size > MAX_POLICY_BYTES:
            st.error(f"{upload.name} is over {MAX_POLICY_BYTES:,} bytes; not a policy.")
            return None
        return upload.name, upload.getvalue().decode("utf-8", errors="replace")
    documents = [d for d in policy_documents.load_all(ctx.data_dir) if d.document is not None]
    if not documents:
        st.info("The store keeps no policy document yet; paste or upload one instead.")
        return None
    chosen = st.selectbox("Version", [d.version for d in documents], key="replay_version")
    doc = next(d for d in documents if d.version == chosen)
    return doc.version, doc.pretty


def render() -> None:
    candidate = pick_candidate()
    if st.button("Replay", type="primary", disabled=candidate is None, key="replay_run"):
        st.session_state[KEY_CANDIDATE] = candidate
    chosen = st.session_state.get(KEY_CANDIDATE)
    if not chosen:
        st.caption("Pick or paste a candidate policy, then press Replay.")
        return
    name, text = chosen
    try:
        compile_text(text, name)
    except PolicyInvalid as invalid:
        st.error(
            f"The candidate policy `{name}` is invalid: {len(invalid.errors)} problem(s). "
            "Nothing was replayed.",
            icon=":material/block:",
        )
        st.code(invalid.report(), language="text")
        return
    replay_report.show(ctx.data_dir, name, text, ctx.flt)


try:
    render()
except QueryError as error:
    widgets.query_error(error)
