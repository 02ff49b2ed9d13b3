"""Tests for callward/secret_rules.py: the RE2-to-Python translation (what RE2 means is
what Python then matches), the conversion of a gitleaks config, and the shipped data file
(licence and source named, every rule compiling, kinds that cannot collide)."""

from __future__ import annotations

import re
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callward.redact import BUILTIN_KINDS, RULESET, RULESET_SOURCE
from callward.secret_rules import (
    DATA_PACKAGE,
    EXCLUDED,
    LICENCE_FILE,
    Untranslatable,
    bounded,
    compile_translated,
    convert,
    kind_of,
    load_rules,
    translate,
)


@pytest.mark.parametrize(
    ("re2", "matches", "misses"),
    [
        # (?i) mid-pattern applies to the rest of its group only
        (r"\b(p8e-(?i)[a-z]{4})x", ["p8e-ABCDx"], ["P8E-abcdx", "p8e-abcdX"]),
        (r"ab(?i)cd", ["abCD"], ["ABcd"]),
        (r"(?i)key-(?-i:[A-Z]{2})", ["KEY-AB"], ["key-ab"]),
        (r"tok\z", ["tok"], ["tok\n"]),
        (r"pat[[:alnum:]]{3}", ["patA1b"], ["pat:::", "pat[[["]),
        (r"[[:xdigit:][:punct:]]+", ["af09!-"], ["xyz"]),
        (r"(?<name>ab)c", ["abc"], ["ab"]),
        (r"a\Q.*\Eb", ["a.*b"], ["axxb"]),
        (r"[]a]+", ["]a]"], ["b"]),
    ],
)
def test_translation_keeps_re2_meaning(re2: str, matches: list[str], misses: list[str]) -> None:
    regex = compile_translated(translate(re2))
    for text in matches:
        assert regex.fullmatch(text), (re2, text)
    for text in misses:
        assert not regex.fullmatch(text), (re2, text)


def test_bounded_vendor_rules_redact_the_same_secret() -> None:
    """The rewrite drops the leading context and makes the name run possessive; the secret
    found is the same, with or without the rewrite."""
    re2 = (
        r"(?i)[\w.-]{0,50}?(?:acme)(?:[ \t\w.-]{0,20})[\s'\"]{0,3}(?:=|>|:{1,3}=|\|\||:|=>|\?=|,)"
        r"[\x60'\"\s=]{0,5}([a-z0-9]{16})(?:[\x60'\"\s;]|\\[nr]|$)"
    )
    plain = compile_translated(translate(re2))
    fast = compile_translated(bounded(translate(re2)))
    assert "{0,50}" not in fast.pattern and "{0,20}+" in fast.pattern
    for text in (
        "my_acme_api_key = 'a1b2c3d4e5f6a7b8'",
        "ACME_TOKEN:a1b2c3d4e5f6a7b8 rest",
        'x.acme-key => "a1b2c3d4e5f6a7b8"',
        "acme_key_with_a_very_long_name_here = a1b2c3d4e5f6a7b8",
        "acme = short",
    ):
        slow, quick = plain.search(text), fast.search(text)
        assert (slow and slow.group(1)) == (quick and quick.group(1)), text


@pytest.mark.parametrize("re2", [r"\pL+", r"\p{Greek}", r"(?U)a+", r"(ab", r"ab)", r"[ab"])
def test_untranslatable_patterns_are_refused(re2: str) -> None:
    with pytest.raises(Untranslatable):
        translate(re2)


@given(st.from_regex(r"[a-z0-9_.\-]{1,12}", fullmatch=True))
def test_plain_patterns_translate_to_themselves(pattern: str) -> None:
    assert translate(pattern) == pattern


def test_convert_keeps_translates_and_drops_with_reasons() -> None:
    config = {
        "rules": [
            {
                "id": "acme-token",
                "regex": r"\b(acme_(?i)[a-z0-9]{20})\b",
                "keywords": ["ACME_"],
                "entropy": 3.0,
                "allowlists": [{"regexes": ["EXAMPLE"]}, {"paths": ["x"]}],
            },
            {"id": "needs-path", "regex": "x", "path": r"\.tf$", "keywords": ["x"]},
            {"id": "path-only", "path": r"\.p12$"},
            {"id": "unicode", "regex": r"\pL{10}", "keywords": ["zz"]},
            {"id": "greedy", "regex": r"tool.*secret=(\w+)", "keywords": ["tool"]},
            {"id": "generic-api-key", "regex": "k", "keywords": ["key"]},
        ]
    }
    data = convert(config, "0" * 40)
    assert [r["id"] for r in data["rules"]] == ["acme-token"]
    rule = data["rules"][0]
    assert rule["kind"] == "acme_token" and rule["keywords"] == ["acme_"]
    assert rule["entropy"] == 3.0 and len(rule["allowlists"]) == 1  # the path one cannot apply
    assert re.compile(rule["regex"]).search("acme_ABCDEFGHIJ0123456789")
    dropped = {d["id"]: d["reason"] for d in data["dropped"]}
    assert set(dropped) == {"needs-path", "path-only", "unicode", "greedy", "generic-api-key"}
    assert (
        "quadratic" in dropped["greedy"]
        and dropped["generic-api-key"] == EXCLUDED["generic-api-key"]
    )
    assert data["commit"] == "0" * 40 and data["commit"] in data["source"]


def test_shipped_ruleset_names_its_licence_and_source() -> None:
    assert RULESET_SOURCE["source"].startswith("https://github.com/gitleaks/gitleaks/blob/")
    assert RULESET_SOURCE["commit"] in RULESET_SOURCE["source"]
    assert "MIT" in RULESET_SOURCE["licence"]
    licence = resources.files(DATA_PACKAGE).joinpath(LICENCE_FILE).read_text(encoding="utf-8")
    assert "MIT License" in licence and RULESET_SOURCE["commit"] in licence
    assert RULESET_SOURCE["dropped"], "the dropped rules are listed with their reasons"


def test_shipped_rules_compile_and_their_kinds_are_markers_of_their_own() -> None:
    rules, _ = load_rules()
    assert len(rules) == len(RULESET) >= 150
    kinds = [r.kind for r in rules]
    assert len(set(kinds)) == len(kinds)
    # A kind shared with a built-in one must be the same kind of secret (both are JWTs).
    assert set(kinds) & {k.kind for k in BUILTIN_KINDS} <= {"jwt"}
    for rule in rules:
        assert re.fullmatch(r"[a-z0-9_]+", rule.kind) and rule.kind == kind_of(rule.rule_id)
        assert rule.keywords and all(k == k.lower() for k in rule.keywords)
        assert not rule.regex.search(""), rule.rule_id
