"""Loading and validating policies: the broken-policy corpus, limits of input, syntax errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from callward.cli import app
from callward.enforcer.errors import PolicyInvalid
from callward.enforcer.policy_load import check_file, compile_text, load_policy

BROKEN = Path(__file__).parent / "broken"
EXPECTED: dict[str, list[str]] = yaml.safe_load((BROKEN / "expected.yaml").read_text())
REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_policy_reports_every_error_sorted(name: str) -> None:
    errors = check_file(BROKEN / name)
    got = [f"{e.location.line}:{e.location.col} {e.code}" for e in errors]
    assert got == EXPECTED[name]
    assert errors == sorted(errors)


def test_corpus_is_complete() -> None:
    files = {p.name for p in BROKEN.iterdir() if p.name != "expected.yaml"}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_policy_check_cli_prints_file_line_col_and_fails(name: str) -> None:
    result = runner.invoke(app, ["policy", "check", str(BROKEN / name)])
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == len(EXPECTED[name])
    for line, want in zip(lines, EXPECTED[name], strict=True):
        pos, code = want.split()
        assert line.startswith(f"{BROKEN / name}:{pos}: {code}: ")


def test_policy_check_cli_ok_for_examples() -> None:
    files = sorted(str(p) for p in (REPO / "examples" / "policies").iterdir())
    result = runner.invoke(app, ["policy", "check", *files])
    assert result.exit_code == 0, result.output
    assert result.output.count(": ok (sha256:") == len(files)


def test_seed_policy_is_accepted_unchanged() -> None:
    p = load_policy(REPO / "examples" / "policies" / "seed.json")
    assert p.default == "deny"
    (limit,) = p.tools[0].limits
    assert (limit.counter, limit.window, limit.max, limit.scope) == (
        "run_python_file_rate",
        "minute",
        10,
        "grant",
    )
    assert p.version.startswith("sha256:")


def test_unreadable_and_oversize_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyInvalid) as e:
        load_policy(tmp_path / "missing.json")
    assert e.value.errors[0].code == "unreadable"
    big = tmp_path / "big.json"
    big.write_text(
        '{"version": "1", "tools": {' + ",".join(f'"t{i}": {{}}' for i in range(400_000)) + "}}"
    )
    with pytest.raises(PolicyInvalid) as e:
        load_policy(big)
    assert e.value.errors[0].code == "too_large"
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe{\x00")
    with pytest.raises(PolicyInvalid) as e:
        load_policy(binary)
    assert e.value.errors[0].code == "encoding"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "null",
        "[]",
        "42",
        '"version"',
        "{",
        "version: [1",
        "!!python/object/apply:os.system ['true']",
        '{"version": "1", "tools": {"a/b/c": {}}}',
        '{"version": "1", "tools": {"": {}}}',
        '{"version": 1}',
        '{"version": "1", "tools": {"a": {"limits": [{"counter": "c", "window": "minute", "max": true}]}}}',
        '{"version": "1", "tools": {"a": {"limits": [{"counter": "c", "window": "minute", "max": 1.5}]}}}',
        '{"version": "1", "tools": {"a": {"require": [{"conditions": []}]}}}',
        '{"version": "1", "tools": {"a": {"action": "maybe"}}}',
        '{"version": "1", "tools": {"a": {"deny_if": [{"conditions": [{"path": "args.x", "op": "exists", "value": "yes"}]}]}}}',
        '{"version": "1", "tools": {"a": {"deny_if": [{"conditions": [{"path": "args..x", "op": "exists"}]}]}}}',
        '{"version": "1", "tools": {"a": {"deny_if": [{"conditions": [{"path": "args.x", "op": "lt", "value": NaN}]}]}}}',
    ],
)
def test_hostile_or_malformed_text_is_rejected_whole(text: str) -> None:
    with pytest.raises(PolicyInvalid) as e:
        compile_text(text, "p")
    assert e.value.errors
    for err in e.value.errors:
        assert str(err).startswith("p:")


@pytest.mark.parametrize(
    "text",
    [
        '{"version": "1", "description": ' + "[" * 100_000 + "]" * 100_000 + "}",
        'version: "1"\ndescription: ' + "[" * 5_000 + "]" * 5_000,
    ],
    ids=["json", "yaml"],
)
def test_deeply_nested_policy_is_refused_cleanly(text: str) -> None:
    with pytest.raises(PolicyInvalid) as e:
        compile_text(text, "deep")
    assert [err.code for err in e.value.errors] == ["too_deep"]


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ('{"version": "1", "default": "deny",\n "default": "allow"}', 2, "default"),
        (
            '{"version": "1", "default": "deny", "tools": {\n'
            '  "rm": {"action": "deny"},\n  "rm": {"action": "allow"}}}',
            3,
            "rm",
        ),
        (
            'version: "1"\ndefault: deny\ntools:\n  rm: {action: deny}\n  rm: {action: allow}\n',
            5,
            "rm",
        ),
        ('version: "1"\ndefault: deny\ntools:\n  rm: {action: deny, action: allow}\n', 4, "action"),
    ],
)
def test_a_key_given_twice_is_an_error_at_its_second_place(text: str, line: int, key: str) -> None:
    """json and PyYAML both keep the last value silently; the author may have read the first."""
    with pytest.raises(PolicyInvalid) as info:
        compile_text(text, "p")
    errors = info.value.errors
    assert [(e.code, e.location.line) for e in errors] == [("duplicate_key", line)]
    assert repr(key) in errors[0].message


_KEYS = st.sampled_from(["version", "default", "tools", "action", "limits", "message", "x"])
_DOCS = st.recursive(
    st.sampled_from(["deny", "allow", 1, True]),
    lambda inner: st.dictionaries(_KEYS, inner, min_size=1, max_size=4),
    max_leaves=12,
)


@given(_DOCS.filter(lambda d: isinstance(d, dict)), st.data())
def test_any_duplicated_key_anywhere_refuses_the_whole_policy(
    doc: dict[str, object], data: st.DataObject
) -> None:
    import json

    text = json.dumps({"version": "1", "default": "deny", "tools": {"t": doc}})
    # Repeat one existing key-value pair of some object in place: text still valid JSON.
    pairs = re.findall(r'"[a-z]+": (?:"[a-z]+"|\d+|true)', text)
    pair = data.draw(st.sampled_from(pairs))
    at = text.index(pair)
    doubled = text[:at] + pair + ", " + text[at:]
    with pytest.raises(PolicyInvalid) as info:
        compile_text(doubled, "p")
    assert "duplicate_key" in {e.code for e in info.value.errors}
