"""Bearer tokens -> grants (callward/auth.py): loading, every problem at once, and
hostile headers."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callward.auth import (
    MIN_TOKEN_LENGTH,
    TokensInvalid,
    load_tokens,
    parse_tokens,
    token_digest,
)

REPO = Path(__file__).resolve().parent.parent

GOOD = "alice-0123456789abcdef"


def test_example_tokens_file_loads() -> None:
    table = load_tokens(REPO / "examples" / "tokens.yaml")
    assert len(table) >= 2


def test_plain_and_hashed_tokens() -> None:
    table = parse_tokens(
        {
            "tokens": [
                {"token": GOOD, "grant": "alice"},
                {"sha256": token_digest("ci-bot-secret-0123456789"), "grant": "ci", "note": "CI"},
            ]
        }
    )
    alice = table.lookup(GOOD)
    assert alice is not None and alice.grant == "alice"
    assert alice.fingerprint == token_digest(GOOD)[:16]
    bot = table.from_authorization("bearer   ci-bot-secret-0123456789 ")
    assert bot is not None and bot.grant == "ci"
    assert table.lookup(GOOD[:-1]) is None
    assert table.from_authorization(f"Basic {GOOD}") is None
    assert table.from_authorization(None) is None
    assert table.from_authorization("Bearer") is None


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(TokensInvalid) as bad:
        parse_tokens(
            {
                "tokens": [
                    {"token": "short", "grant": "a"},
                    {"token": GOOD, "grant": ""},
                    {"grant": "nobody"},
                    {"token": GOOD, "sha256": token_digest(GOOD), "grant": "both"},
                    {"sha256": "NOT-HEX", "grant": "b"},
                    {"token": GOOD, "grant": "a", "colour": "red"},
                    {"token": GOOD, "grant": "dup"},
                    {"token": "has a space in it 0123", "grant": "c"},
                    "not an object",
                ]
            }
        )
    problems = bad.value.problems
    assert len(problems) == 9, problems
    assert any(f"{MIN_TOKEN_LENGTH}+" in p for p in problems)
    assert any("listed twice" in p for p in problems)
    assert any("colour" in p for p in problems)


@pytest.mark.parametrize("doc", [None, [], {"tokens": []}, {"tokens": {}}, {"tokens": [], "x": 1}])
def test_wrong_shapes_are_refused(doc: object) -> None:
    with pytest.raises(TokensInvalid):
        parse_tokens(doc)


def test_unreadable_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(TokensInvalid, match="unreadable"):
        load_tokens(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("tokens: [\n")
    with pytest.raises(TokensInvalid, match="not valid"):
        load_tokens(broken)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TokensInvalid):
        load_tokens(binary)


@given(st.text(max_size=300))
def test_no_header_value_raises_and_only_the_exact_token_matches(header: str) -> None:
    table = parse_tokens({"tokens": [{"token": GOOD, "grant": "alice"}]})
    got = table.from_authorization(header)
    scheme, _, rest = header.strip().partition(" ")
    assert (got is not None) == (scheme.lower() == "bearer" and rest.strip() == GOOD)


def test_the_proxy_keeps_its_old_import_path() -> None:
    import callward.auth
    from callward.enforcer.proxy import tokens

    assert tokens.TokenTable is callward.auth.TokenTable
    assert tokens.load_tokens is callward.auth.load_tokens
