"""A small recorded store with known answers, shared by the CLI and report tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from callward.enforcer.policy import compile_document
from tests.replay.recorded import EPOCH_US, Call, simulate_online, write_store

RECORDED_POLICY: dict[str, Any] = {
    "version": "1",
    "default": "allow",
    "tools": {"pay": {"limits": [{"counter": "pay", "window": "minute", "max": 100}]}},
}
CANDIDATE_POLICY: dict[str, Any] = {
    "version": "1",
    "default": "allow",
    "tools": {
        "pay": {
            "limits": [{"counter": "pay", "window": "minute", "max": 100}],
            "deny_if": [
                {
                    "conditions": [{"path": "args.amount", "op": "gt", "value": 100}],
                    "reason": "payments over 100 need a person",
                }
            ],
        },
        "delete": {"action": "deny", "reason": "no deletes"},
    },
}


def hand_made_calls() -> list[Call]:
    calls: list[Call] = []

    def add(tool: str, agent: str, minute: int, **args: Any) -> None:
        n = len(calls) + 1
        calls.append(
            Call(
                start_us=EPOCH_US + minute * 60_000_000 + n * 1000,
                duration_us=5000,
                tool=tool,
                agent_id=agent,
                session_id=f"s-{agent}",
                arguments=args,
                span_id=f"{n:016x}",
            )
        )

    for i in range(10):
        add("pay", "ana", i, amount=50)
    for i in range(4):
        add("pay", "bo", 60 + i, amount=500)
    for i in range(3):
        add("delete", "bo", 120 + i, path=f"/tmp/{i}")
    for i in range(8):
        add("read", "ana", 180 + i, path="/etc/hosts")
    return calls


@pytest.fixture()
def store(tmp_path: Path) -> dict[str, Path]:
    """A store of 25 calls: 7 become denied under the candidate; 2 are UNKNOWN; one is
    recorded under a policy version the store does not keep."""
    recorded = compile_document(RECORDED_POLICY)
    records = simulate_online(hand_made_calls(), [(0, recorded)])
    records[-1]["decision"] = ""  # a span from another source: no decision
    records[-1]["rule"] = ""
    records[-2]["attributes"] = '{"callward.approval.granted": true}'
    records[-3]["policy_version"] = "sha256:00000000deadbeef"
    data = tmp_path / "data"
    write_store(data, records, [recorded])
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(yaml.safe_dump(CANDIDATE_POLICY), encoding="utf-8")
    recorded_file = tmp_path / "recorded.yaml"
    recorded_file.write_text(yaml.safe_dump(RECORDED_POLICY), encoding="utf-8")
    return {"data": data, "candidate": candidate, "recorded": recorded_file, "tmp": tmp_path}
