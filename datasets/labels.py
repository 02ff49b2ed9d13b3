"""The labels file beside a generated store: ``D/labels.jsonl``, one incident per line.

JSON Lines so that a person can read it and any tool can load it (``duckdb -c "select *
from 'D/labels.jsonl'"``). Each line::

    {"incident_id": "s7-00012", "kind": "exfiltration", "pattern": "send_then_delete",
     "agent": "coder-01", "agent_id": "coder-01", "session_id": "sess_…", "trace_id": "…",
     "span_ids": ["…", …], "first_seen": "2026-01-06T10:02:03.123456+00:00",
     "last_seen": "…"}

``kind`` is ``runaway``, ``exfiltration`` or ``none`` (a hard negative: legitimate traffic
that must not be flagged). ``span_ids`` are the incident's own calls, not the ordinary calls
that open its session. ``agent`` is the generator's name for the agent even when its spans
carry no ``agent_id``; ``session_id`` is empty for such agents and ``trace_id`` identifies
the session instead (:attr:`Label.session_key`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

LABELS_FILE = "labels.jsonl"


@dataclass(frozen=True)
class Label:
    incident_id: str
    kind: str
    pattern: str
    agent: str
    agent_id: str
    session_id: str
    trace_id: str
    span_ids: tuple[str, ...]
    first_seen: datetime
    last_seen: datetime

    @property
    def session_key(self) -> str:
        return self.session_id or self.trace_id

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["span_ids"] = list(self.span_ids)
        d["first_seen"] = self.first_seen.isoformat()
        d["last_seen"] = self.last_seen.isoformat()
        return d


def write_labels(data_dir: Path, labels: list[Label]) -> Path:
    """Append ``labels`` to ``D/labels.jsonl`` (a store generated twice keeps both sets)."""
    path = Path(data_dir) / LABELS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for label in labels:
            f.write(json.dumps(label.to_json(), separators=(",", ":")) + "\n")
    return path


def read_labels(data_dir: Path) -> list[Label]:
    path = Path(data_dir) / LABELS_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        out.append(
            Label(
                incident_id=d["incident_id"],
                kind=d["kind"],
                pattern=d["pattern"],
                agent=d["agent"],
                agent_id=d["agent_id"],
                session_id=d["session_id"],
                trace_id=d["trace_id"],
                span_ids=tuple(d["span_ids"]),
                first_seen=datetime.fromisoformat(d["first_seen"]),
                last_seen=datetime.fromisoformat(d["last_seen"]),
            )
        )
    return out
