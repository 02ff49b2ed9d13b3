"""Fuzzing the policy loader and the engine over whatever a policy file can hold.

A policy comes from a file an operator edits, a pull request, or a hot reload; the loader
must answer every input with a compiled policy or with located errors (``PolicyInvalid``),
never with another exception and never half loaded. A policy that loads must then decide
any arguments a client can send without raising. Three sources of input: arbitrary text
and bytes, documents built from the policy grammar with any JSON value in any slot, and
YAML's own hostile forms (tags, alias bombs, deep nesting).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callward.enforcer.engine import Request, decide
from callward.enforcer.errors import PolicyInvalid
from callward.enforcer.limits import InMemoryLimitState
from callward.enforcer.policy_load import compile_text
from callward.enforcer.policy_model import ACTIONS, OPS, PATH_ROOTS, SCOPES, WINDOWS

NOW = 1_800_000_000.0

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _either(good: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """Mostly what the grammar expects, sometimes any JSON value at all."""
    return st.one_of(good, good, good, json_values)


paths = st.one_of(
    st.sampled_from(PATH_ROOTS),
    st.builds(lambda k: f"args.{k}", st.sampled_from(["a", "b", "n", "path", "0", "x.y"])),
    st.text(max_size=10),
)
conditions = st.fixed_dictionaries(
    {"path": _either(paths), "op": _either(st.sampled_from(OPS)), "value": json_values}
)
rules = st.fixed_dictionaries(
    {"conditions": _either(st.lists(_either(conditions), max_size=3))},
    optional={
        "on_deny": _either(st.text(max_size=10)),
        "action": _either(st.sampled_from(ACTIONS)),
    },
)
limits = st.fixed_dictionaries(
    {
        "counter": _either(st.sampled_from(["c1", "c2"])),
        "window": _either(st.sampled_from(list(WINDOWS))),
        "max": _either(st.integers(-2, 5)),
        "scope": _either(st.sampled_from(SCOPES)),
    }
)
tool_entries = st.fixed_dictionaries(
    {},
    optional={
        "action": _either(st.sampled_from(ACTIONS)),
        "require": _either(st.lists(_either(rules), max_size=2)),
        "deny_if": _either(st.lists(_either(rules), max_size=2)),
        "limits": _either(st.lists(_either(limits), max_size=2)),
    },
)
documents = st.fixed_dictionaries(
    {"version": _either(st.just("1")), "default": _either(st.sampled_from(ACTIONS))},
    optional={
        "tools": _either(
            st.dictionaries(
                st.sampled_from(["t", "u", "*", "srv/t"]), _either(tool_entries), max_size=3
            )
        ),
        "hide": _either(st.lists(st.sampled_from(["t", "u*", "x"]), max_size=2)),
    },
)
arguments = st.dictionaries(st.sampled_from(["a", "b", "n", "path", "x"]), json_values, max_size=4)


def _load(text: str) -> object:
    """The loader's answer: a policy, or its located errors; anything else fails the test."""
    try:
        return compile_text(text, "fuzz")
    except PolicyInvalid as e:
        assert e.errors, "PolicyInvalid must carry at least one error"
        for err in e.errors:
            assert err.code and err.message
            assert err.location.line >= 0 and err.location.col >= 0
            assert str(err).startswith("fuzz")
        return e


@given(st.text(max_size=300))
def test_any_text_loads_or_is_refused_with_located_errors(text: str) -> None:
    _load(text)


@given(st.binary(max_size=300))
def test_any_bytes_decoded_leniently_load_or_are_refused(data: bytes) -> None:
    _load(data.decode("utf-8", errors="replace"))


@given(documents, st.lists(st.tuples(st.sampled_from(["t", "u", "x"]), arguments), max_size=6))
def test_grammar_shaped_documents_load_cleanly_and_then_decide_anything(
    doc: dict[str, object], calls: list[tuple[str, dict[str, object]]]
) -> None:
    loaded = _load(json.dumps(doc))
    if isinstance(loaded, PolicyInvalid):
        return
    state = InMemoryLimitState()
    for i, (tool, args) in enumerate(calls):
        req = Request(
            tool, args, server="srv", grant="g", agent_id="a", session_id="s", call_id=str(i)
        )
        d = decide(loaded, req, state, NOW + i)  # type: ignore[arg-type]
        assert d.decision in ACTIONS


@pytest.mark.parametrize(
    "text",
    [
        # a YAML tag that would build a Python object with an unsafe loader
        'version: "1"\ndefault: !!python/object/apply:os.system ["true"]\n',
        # an alias bomb: each level refers to the last nine times
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n"
            for p, c in zip("abcdefg", "bcdefgh", strict=True)
        )
        + 'version: "1"\ndefault: deny\n',
        # nesting far past any policy's depth, in both syntaxes
        "[" * 5000 + "]" * 5000,
        "x: " + "[" * 5000 + "]" * 5000 + "\n",
        # numbers JSON allows and a double cannot hold
        '{"version": "1", "default": "deny", "x": 1e999}',
        '{"version": "1", "default": "deny", "x": NaN}',
        # found by the grammar property: a list where a window name goes raised TypeError
        '{"version": "1", "default": "deny", "tools": {"t": {"limits": [{"counter": "c", '
        '"window": ["minute"], "max": 1, "scope": "grant"}]}}}',
    ],
    ids=["python-tag", "alias-bomb", "deep-json", "deep-yaml", "overflow", "nan", "list-window"],
)
def test_hostile_yaml_and_json_forms_are_refused_cleanly(text: str) -> None:
    """Each refused with located errors; the alias bomb took minutes before it was bounded."""
    assert isinstance(_load(text), PolicyInvalid)
