"""The fast decision path must give exactly what the engine gives call by call in order."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callward.datasets.decisions import CallTable, _replay_all, evaluate
from callward.enforcer.policy import compile_text

POLICY = compile_text(
    """
version: "1"
default: deny
all_tools:
  limits: [{counter: per_agent, window: minute, max: 6, scope: agent}]
tools:
  alpha:
    deny_if: [{conditions: [{path: args.n, op: gt, value: 5}]}]
    limits: [{counter: per_session, window: minute, max: 3, scope: session}]
  beta:
    limits:
      - {counter: per_grant, window: minute, max: 2, scope: grant}
      - {counter: per_agent, window: minute, max: 6, scope: agent}
  gamma:
    action: require_approval
"""
)
TOOLS = ("alpha", "beta", "gamma", "delta")


def table(data: dict) -> CallTable:
    texts, text_tool, text_agent = [], [], []
    for agent in range(2):
        for tool in range(len(TOOLS)):
            for n in (1, 9):
                texts.append(json.dumps({"n": n}))
                text_tool.append(tool)
                text_agent.append(agent)
    rows = data["rows"]
    return CallTable(
        texts=texts,
        text_tool=np.array(text_tool),
        text_agent=np.array(text_agent),
        tools=TOOLS,
        servers=["s"] * len(TOOLS),
        agent_ids=["a1", data["second_agent_id"]],
        grants=["g", "g"],
        session_ids=["s1", "s2", "", ""],
        row_text=np.array([r[0] for r in rows], dtype=np.int64),
        row_session=np.array([r[1] for r in rows], dtype=np.int64),
        row_time=np.array([r[2] for r in rows], dtype=float),
    )


rows_strategy = st.lists(
    st.tuples(
        st.integers(0, 2 * len(TOOLS) * 2 - 1),
        st.integers(0, 3),
        st.floats(0, 130, allow_nan=False).map(lambda x: round(x, 1)),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=100)
@given(rows=rows_strategy, second_agent_id=st.sampled_from(["a2", ""]))
def test_fast_path_equals_ordered_replay(rows, second_agent_id) -> None:
    t = table({"rows": rows, "second_agent_id": second_agent_id})
    fast = evaluate(POLICY, t)
    order = np.lexsort((np.arange(len(rows)), t.row_time))
    slow_table: list = []

    def code_of(d, r, m):
        slow_table.append((d, r, m))
        return len(slow_table) - 1

    slow = _replay_all(POLICY, t, order, code_of, lambda i: json.loads(t.texts[i]), slow_table)
    assert [fast.table[c] for c in fast.code] == [slow_table[c] for c in slow.code]


@pytest.mark.parametrize("calls", [3, 4, 5])
def test_a_window_one_over_its_max_denies_the_last_call(calls: int) -> None:
    rows = [(0, 0, float(i)) for i in range(calls)]  # alpha, n=1, same session, one minute
    d = evaluate(POLICY, table({"rows": rows, "second_agent_id": "a2"}))
    decisions = [d.table[c][0] for c in d.code]
    assert decisions == ["allow"] * 3 + ["deny"] * (calls - 3)
    assert d.replayed == (calls if calls > 3 else 0)
