"""The compiled form: content versions and the counter signatures a reload keeps."""

from __future__ import annotations

import json
from pathlib import Path

from callward.enforcer.policy_load import compile_text, load_policy

REPO = Path(__file__).resolve().parents[2]


def test_version_ignores_formatting_and_key_order() -> None:
    doc = {"version": "1", "default": "deny", "tools": {"a": {}, "b": {"action": "deny"}}}
    a = compile_text(json.dumps(doc, indent=4))
    b = compile_text(json.dumps(dict(reversed(list(doc.items())))))
    assert a.version == b.version


def test_limit_signatures_for_reload() -> None:
    p = load_policy(REPO / "examples" / "policies" / "seed.json")
    assert p.limit_signatures() == {"run_python_file_rate": ("minute", 10, "grant", False)}
