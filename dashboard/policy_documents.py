"""The policy documents the collector kept (``D/policies/<version>.json``) and their diff.

Versions are content hashes, so each document's version is recomputed from its content with
the enforcer's own :func:`enforcer.policy.policy_version`; a file whose name and content
disagree is refused (listed with its problem, never shown as a document), as replay refuses
it (:func:`record.policy_name_problem`).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callward.enforcer.policy import policy_version
from callward.record import policy_files, policy_name_problem

MAX_DOCUMENT_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class PolicyDocument:
    version: str
    path: Path
    document: dict[str, Any] | None
    problem: str = ""  # why the file could not be read, when it could not

    @property
    def pretty(self) -> str:
        if self.document is None:
            return ""
        return json.dumps(self.document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _read(path: Path) -> PolicyDocument:
    fallback = path.stem
    try:
        if path.stat().st_size > MAX_DOCUMENT_BYTES:
            return PolicyDocument(fallback, path, None, f"over {MAX_DOCUMENT_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return PolicyDocument(fallback, path, None, f"unreadable: {e}")
    # Either the document itself or {"version": ..., "document": {...}} around it.
    if isinstance(data, dict) and isinstance(data.get("document"), dict):
        data = data["document"]
    if not isinstance(data, dict):
        return PolicyDocument(fallback, path, None, "not a JSON object")
    version = policy_version(data)
    problem = policy_name_problem(path, version)
    if problem is not None:
        return PolicyDocument(fallback, path, None, problem)
    return PolicyDocument(version, path, data)


def load_all(data_dir: str | Path) -> list[PolicyDocument]:
    """Every policy document in the store, oldest file first."""
    files = policy_files(data_dir)
    files.sort(key=lambda p: (p.stat().st_mtime, p.name))
    return [_read(p) for p in files]


def diff(old: PolicyDocument, new: PolicyDocument, context: int = 3) -> str:
    """A unified diff of the two documents as sorted, indented JSON."""
    return "".join(
        difflib.unified_diff(
            old.pretty.splitlines(keepends=True),
            new.pretty.splitlines(keepends=True),
            fromfile=old.version,
            tofile=new.version,
            n=context,
        )
    )
