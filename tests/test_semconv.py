"""callward/semconv.py is the one home of span names and attribute keys."""

from __future__ import annotations

import ast
from pathlib import Path

from callward import semconv

ROOT = Path(__file__).resolve().parents[1]
# The emitter, the decoder, and the span builder that stands in for the emitter.
USERS = ("enforcer/telemetry.py", "collector/decode.py", "collector/otlp_build.py")


def _values() -> dict[str, str]:
    return {
        name: value
        for name, value in vars(semconv).items()
        if name.isupper() and isinstance(value, str)
    }


def _literals(path: Path) -> list[tuple[int, str]]:
    """Every string constant of a module, docstrings excluded."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_every_key_is_defined_once() -> None:
    values = _values()
    assert len(values) > 20
    seen: dict[str, str] = {}
    for name, value in values.items():
        assert value not in seen, f"{name} and {seen[value]} both define {value!r}"
        seen[value] = name


def test_keys_follow_their_namespaces() -> None:
    prefixes = ("gen_ai.", "mcp.", "callward.", "otel.", "error.", "service.")
    for name, value in _values().items():
        if name.endswith("_PREFIX") or name in (
            "GEN_AI_OPERATION_EXECUTE_TOOL",
            "MCP_METHOD_TOOLS_CALL",
        ):
            continue
        assert value.startswith(prefixes), name


def test_emitter_and_decoder_write_no_key_literal() -> None:
    keys = set(_values().values())
    for rel in USERS:
        found = [(line, text) for line, text in _literals(ROOT / rel) if text in keys]
        assert found == [], f"{rel} spells out keys of callward.semconv: {found}"


def test_the_literal_scan_would_see_a_key(tmp_path: Path) -> None:
    """The scan above is not blind: a key spelled out in code is found, one in a docstring
    is not."""
    module = tmp_path / "m.py"
    module.write_text(
        f'"""Writes {semconv.CALLWARD_RULE}."""\nx = {{{semconv.CALLWARD_DECISION!r}: 1}}\n'
    )
    assert [text for _, text in _literals(module)] == [semconv.CALLWARD_DECISION]


def test_tool_call_span_name() -> None:
    assert semconv.tool_call_span_name("read_file") == "execute_tool read_file"
    assert semconv.tool_call_span_name("x").startswith(semconv.GEN_AI_OPERATION_EXECUTE_TOOL)
