"""The ``callward.enforcer.policy`` facade re-exports the loader and the compiled form."""

from __future__ import annotations

from callward.enforcer import policy, policy_load, policy_model


def test_facade_reexports_every_public_name_from_its_home() -> None:
    for name in policy.__all__:
        home = policy_load if hasattr(policy_load, name) else policy_model
        if name == "PolicyInvalid":
            continue
        assert getattr(policy, name) is getattr(home, name), name
    assert set(policy.__all__) >= {
        "CompiledPolicy",
        "Condition",
        "Limit",
        "Rule",
        "ToolRule",
        "check_file",
        "compile_document",
        "compile_text",
        "load_policy",
        "policy_version",
        "canonical_json",
        "MAX_POLICY_BYTES",
    }


def test_facade_compiles_the_same_policy_as_the_loader() -> None:
    text = '{"version": "1", "tools": {"a": {"limits": [{"counter": "c", "window": "minute", "max": 2}]}}}'
    assert policy.compile_text(text).canonical == policy_load.compile_text(text).canonical
    assert isinstance(policy.compile_text(text), policy_model.CompiledPolicy)
