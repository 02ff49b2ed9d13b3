"""Tests for callward/redact.py: one planted secret of each kind, fresh secrets of each
kind's format drawn by hypothesis and embedded anywhere in text and JSON (each becomes its
kind's marker, the text around it stays), key-like names, extra patterns, hostile input,
and the invariants (idempotent, bounded growth, valid JSON stays valid JSON, no planted
secret survives)."""

from __future__ import annotations

import io
import json
import logging
import re
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from callward.redact import (
    BUILTIN_KINDS,
    ENV_PATTERNS,
    RULESET,
    Redactor,
    count_redactions,
    looks_random,
    redact_json_text,
    redact_logs,
    redact_text,
    shannon_entropy,
)
from callward.secret_rules import SecretRule

# kind -> (text that carries the secret, the substring that must not survive)
PLANTED: dict[str, tuple[str, str]] = {
    "aws_access_key": ("AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    "aws_secret_key": (
        "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ),
    "github_token": (
        "ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
        "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
    ),
    "gitlab_token": ("glpat-xYz12345678901234567", "xYz12345678901234567"),
    "slack_token": (
        "xoxb-123456789012-1234567890123-abcdefABCDEF",
        "1234567890123-abcdefABCDEF",
    ),
    "slack_webhook": (
        "https://hooks.slack.com/services/T0AAAAAAA/B0BBBBBBB/cccccccccccccccccccccccc",
        "cccccccccccccccccccccccc",
    ),
    "stripe_key": ("sk_live_51HaBcDeFgHiJkLmNoPqRsTu", "51HaBcDeFgHiJkLmNoPqRsTu"),
    "openai_key": ("sk-proj-abcDEF1234567890ghijKLMNOP", "abcDEF1234567890ghijKLMNOP"),
    "anthropic_key": (
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345",
        "abcdefghijklmnopqrstuvwxyz012345",
    ),
    "jwt": (
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ),
    "private_key": (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAq7BFUpkGp3+XQ\nZmV4YW1wbGU=\n"
        "-----END RSA PRIVATE KEY-----",
        "MIIEowIBAAKCAQEAq7BFUpkGp3+XQ",
    ),
    "url_password": ("postgres://admin:Tr0ub4dor-3xyz@db.internal:5432/app", "Tr0ub4dor-3xyz"),
    "google_api_key": (
        "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
        "SyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
    ),
    "huggingface_token": (
        "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",
        "jDfKLsmQoPzXwVnBtRyUiOaSeDfGhJkLzX",
    ),
    "npm_token": (
        "npm_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
        "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    ),
    "sendgrid_key": (
        "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",
        "TwL2iGABf9DHoTf-09kqeF8tAmbihYzrnopKc-1s5cr",
    ),
    "azure_client_secret": (
        "xAb8Q~Zq3vN7rT2yW9kL4mP6sD1fG5hJ8cV0bX",
        "Zq3vN7rT2yW9kL4mP6sD1fG5hJ8cV0bX",
    ),
    "azure_storage_key": (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey="
        + "Kq9wXz3Vb7Nm2Lp5Rt8Yu1Io4Ps6Df0Gh" * 2
        + "Kq9wXz3Vb7Nm2Lp5Rt8Y=="
        + ";EndpointSuffix=core.windows.net",
        "Kq9wXz3Vb7Nm2Lp5Rt8Yu1Io4Ps6Df0GhKq9w",
    ),
    "cli_password": ("curl -u alice:Wint3r-is-coming https://api.example.com", "Wint3r-is-coming"),
}
EXTRA_TEXT_CASES = {
    "github_pat": ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "github_token"),
    "github_server": ("ghs_" + "Q" * 18 + "7" * 18, "github_token"),
    "github_oauth": ("gho_" + "z9" * 18, "github_token"),
    "slack_user": ("xoxp-2222-3333-abcdefabcdef", "slack_token"),
    "stripe_restricted": ("rk_live_ABCDEFGHIJKLMNOP1234", "stripe_key"),
    "stripe_test": ("sk_test_ABCDEFGHIJKLMNOP1234", "stripe_key"),
    "openai_legacy": ("sk-" + "a1" * 10 + "T3BlbkFJ" + "b2" * 10, "openai_key"),
}


def test_every_builtin_kind_has_a_planted_secret() -> None:
    assert {k.kind for k in BUILTIN_KINDS} == set(PLANTED)


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_planted_secret_in_text_is_replaced_by_its_marker(kind: str) -> None:
    text, secret = PLANTED[kind]
    out = redact_text(f"before {text} after")
    assert f"[REDACTED:{kind}]" in out
    assert secret not in out
    assert out.startswith("before ") and out.endswith(" after")


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_planted_secret_in_json_arguments_is_replaced(kind: str) -> None:
    text, secret = PLANTED[kind]
    args = {"note": f"use {text} please", "nested": {"list": [1, text]}}
    out = redact_json_text(json.dumps(args))
    parsed = json.loads(out)
    assert secret not in out
    assert f"[REDACTED:{kind}]" in parsed["nested"]["list"][1]
    assert parsed["note"].startswith("use ") and parsed["nested"]["list"][0] == 1


@pytest.mark.parametrize("case", sorted(EXTRA_TEXT_CASES))
def test_token_variants(case: str) -> None:
    text, kind = EXTRA_TEXT_CASES[case]
    out = redact_text(f"x={text};")
    assert out == f"x=[REDACTED:{kind}];"


def test_url_password_keeps_user_host_and_path() -> None:
    out = redact_text("clone https://bob:hunter2@git.example.com/repo.git now")
    assert out == "clone https://bob:[REDACTED:url_password]@git.example.com/repo.git now"
    # An '@' inside the password (invalid but common) does not leak the rest.
    out = redact_text("mysql://root:p@ss@db:3306/x")
    assert out == "mysql://root:[REDACTED:url_password]@db:3306/x"


def test_anthropic_key_is_not_typed_as_openai() -> None:
    assert redact_text(PLANTED["anthropic_key"][0]) == "[REDACTED:anthropic_key]"


def test_unterminated_private_key_block_is_still_redacted() -> None:
    text = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU\nAAAA"
    out = redact_text(text)
    assert out == "[REDACTED:private_key]"


def test_private_key_with_escaped_newlines_in_raw_text() -> None:
    raw = '{"key": "-----BEGIN EC PRIVATE KEY-----\\nMHcCAQEEIBf0\\n-----END EC PRIVATE KEY-----"'
    out = redact_text(raw)  # truncated JSON: redacted as text
    assert "MHcCAQEEIBf0" not in out and "[REDACTED:private_key]" in out


# --- key-like names ------------------------------------------------------------------------


def test_values_under_key_like_names() -> None:
    args = {
        "password": "hunter2",
        "db_passwd": 123456,
        "api_key": "Zx9qL2mP8vR4tY7w",
        "headers": {"Authorization": "Bearer abcDEF123456ghiJKL"},
        "client_secret": "9f86d081884c7d659a2feaa0c55ad015",
        "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "tokens": ["aB3dE6gH9jK2mN5p"],
    }
    out = json.loads(redact_json_text(json.dumps(args)))
    assert out == {
        "password": "[REDACTED:password]",
        "db_passwd": "[REDACTED:password]",
        "api_key": "[REDACTED:high_entropy_secret]",
        "headers": {"Authorization": "[REDACTED:high_entropy_secret]"},
        "client_secret": "[REDACTED:high_entropy_secret]",
        "aws_secret_access_key": "[REDACTED:aws_secret_key]",
        "tokens": ["[REDACTED:high_entropy_secret]"],
    }


def test_ordinary_values_are_left_alone() -> None:
    args = {
        "max_tokens": 100,
        "token_count": "5",
        "author": "John Smith",
        "passenger": "Ada Lovelace",
        "keyword": "invoice",
        "secret_santa": "the gift is under the tree",
        "commit": "a" * 40,
        "path": "/home/user/project/README.md",
        "url": "https://api.example.com/v1/items?page=2",
        "ask": "task-runner",
        "auth_mode": "oauth",
    }
    text = json.dumps(args)
    assert redact_json_text(text) == text


def test_key_value_pairs_in_free_text() -> None:
    text = (
        "curl -H 'Authorization: Bearer abcDEF123456ghiJKL' -d password=hunter2 "
        "'https://x.test/?token=short&apikey=Zx9qL2mP8vR4tY7w'"
    )
    out = redact_text(text)
    assert out == (
        "curl -H 'Authorization: [REDACTED:high_entropy_secret]' -d password=[REDACTED:password] "
        "'https://x.test/?token=short&apikey=[REDACTED:high_entropy_secret]'"
    )


def test_looks_random() -> None:
    assert looks_random("Zx9qL2mP8vR4tY7w")
    assert looks_random("Bearer abcDEF123456ghiJKL")
    assert not looks_random("short1A")
    assert not looks_random("aaaaaaaaaaaaaaaaaaaaaaa1")
    assert not looks_random("correct horse battery staple")
    assert not looks_random("alllowercaseletters")


# --- JSON handling -------------------------------------------------------------------------


def test_unchanged_json_keeps_its_formatting() -> None:
    text = '{ "a" :1,\n "b": "plain"}'
    assert redact_json_text(text) is text or redact_json_text(text) == text


def test_non_json_is_redacted_as_text() -> None:
    out = redact_json_text("not json AKIAIOSFODNN7EXAMPLE {")
    assert out == "not json [REDACTED:aws_access_key] {"


def test_unicode_escaped_secret_inside_json_is_found() -> None:
    escaped = json.dumps({"k": "AKIAIOSFODNN7EXAMPLE"}).replace("A", "\\u0041")
    out = redact_json_text(escaped)
    assert "AKIAIOSFODNN7EXAMPLE" not in json.loads(out)["k"]
    assert json.loads(out) == {"k": "[REDACTED:aws_access_key]"}


def test_secrets_in_keys_are_redacted() -> None:
    out = json.loads(redact_json_text(json.dumps({"AKIAIOSFODNN7EXAMPLE": 1})))
    assert out == {"[REDACTED:aws_access_key]": 1}


# --- extra patterns --------------------------------------------------------------------


def test_extra_patterns_whole_match_and_secret_group() -> None:
    r = Redactor(
        extra_patterns={
            "employee_id": r"EMP-\d{6}",
            "internal_pin": r"pin is (?P<secret>\d{4})",
        }
    )
    assert r.redact_text("user EMP-123456 ok") == "user [REDACTED:employee_id] ok"
    assert r.redact_text("the pin is 1234.") == "the pin is [REDACTED:internal_pin]."
    assert r.redact_json_text('{"a": "EMP-000001"}') == '{"a": "[REDACTED:employee_id]"}'
    # built-ins still apply
    assert r.redact_text("AKIAIOSFODNN7EXAMPLE") == "[REDACTED:aws_access_key]"
    # the default redactor does not know the extras
    assert redact_text("EMP-123456") == "EMP-123456"


@pytest.mark.parametrize(
    ("patterns", "message"),
    [
        ({"Bad Kind": "x"}, "lowercase"),
        ({"ok": "("}, "not a valid regex"),
        ({"ok": "a*"}, "empty string"),
        ({"x" * 41: "abc"}, "lowercase"),
    ],
)
def test_invalid_extra_patterns_are_rejected(patterns: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Redactor(extra_patterns=patterns)


def test_environment_inline_json_and_files(tmp_path: Path) -> None:
    inline = Redactor.from_environment({ENV_PATTERNS: '{"ticket": "TCK-[0-9]{5}"}'})
    assert inline.redact_text("TCK-12345") == "[REDACTED:ticket]"

    yaml_file = tmp_path / "patterns.yaml"
    yaml_file.write_text("ticket: 'TCK-[0-9]{5}'\n", encoding="utf-8")
    assert Redactor.from_environment({ENV_PATTERNS: str(yaml_file)}).redact_text("TCK-12345") == (
        "[REDACTED:ticket]"
    )

    json_file = tmp_path / "patterns.json"
    json_file.write_text('{"ticket": "TCK-[0-9]{5}"}', encoding="utf-8")
    assert Redactor.from_environment({ENV_PATTERNS: str(json_file)}).redact_text("TCK-12345") == (
        "[REDACTED:ticket]"
    )

    assert Redactor.from_environment({}).extra == []
    with pytest.raises(ValueError, match="mapping"):
        Redactor.from_environment({ENV_PATTERNS: '{"ticket": 5}'})
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="mapping"):
        Redactor.from_environment({ENV_PATTERNS: str(bad)})


def test_count_redactions() -> None:
    assert count_redactions("") == 0
    assert count_redactions("[REDACTED:jwt] and [REDACTED:aws_access_key]") == 2
    assert count_redactions("[REDACTED:Not A Kind]") == 0
    out = redact_text(" ".join(text for text, _ in PLANTED.values()))
    assert count_redactions(out) == len(PLANTED)


# --- hostile input ---------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "text",
    [
        "A" * 1_000_000,
        "auth" * 250_000,
        "token:" * 150_000,
        "-----BEGIN PRIVATE KEY-----" * 20_000,
        "https://" * 100_000,
        "a=b " * 200_000,
        "sk-" * 300_000,
        "eyJ" * 300_000,
        "x" * 500_000 + "AKIAIOSFODNN7EXAMPLE",
    ],
    ids=lambda t: f"{t[:12]!r}x{len(t)}",
)
def test_oversize_input_finishes_and_still_redacts(text: str) -> None:
    out = redact_text(text)
    assert "AKIAIOSFODNN7EXAMPLE" not in out
    assert len(out) <= len(text) + 30 * count_redactions(out)


@pytest.mark.timeout(60)
def test_deeply_nested_json_falls_back_to_text() -> None:
    text = "[" * 200_000 + '"AKIAIOSFODNN7EXAMPLE"' + "]" * 200_000
    out = redact_json_text(text)
    assert "AKIAIOSFODNN7EXAMPLE" not in out


def test_odd_text_survives() -> None:
    for text in ["", "\x00", "\ud800 lone surrogate", "ü" * 100, "[REDACTED:", "password="]:
        assert redact_text(text) == text
        assert redact_json_text(text) == text
    # NaN is accepted by Python's JSON reader; it passes through untouched
    assert (
        redact_json_text('{"x": NaN, "pwd": "abc"}') == '{"x": NaN, "pwd": "[REDACTED:password]"}'
    )


# --- properties ------------------------------------------------------------------------

_SEPARATORS = st.sampled_from([" ", "\n", "\t", '"', "'", ",", "(", ")", ";", "<", ">", "|"])
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)


@given(st.text(max_size=300))
def test_redact_text_is_idempotent_and_bounded(text: str) -> None:
    once = redact_text(text)
    assert redact_text(once) == once
    assert len(once) <= len(text) + 30 * count_redactions(once)


@given(_json)
def test_redact_json_text_returns_valid_json_and_is_idempotent(value: object) -> None:
    text = json.dumps(value, ensure_ascii=False)
    out = redact_json_text(text)
    json.loads(out)
    assert redact_json_text(out) == out


@given(
    st.text(max_size=80),
    st.deferred(lambda: FRESH_HIDDEN),
    _SEPARATORS,
    _SEPARATORS,
    st.text(max_size=80),
)
def test_no_fresh_secret_survives_in_text(
    prefix: str, secret: tuple[str, str, str], sep_a: str, sep_b: str, suffix: str
) -> None:
    """Built-in kinds between any separators (a ruleset rule accepts the separators its
    regex names: its own test below puts whitespace around it)."""
    _kind, text, hidden = secret
    assume(hidden not in prefix + sep_a and hidden not in sep_b + suffix)
    out = redact_text(prefix + sep_a + text + sep_b + suffix)
    assert hidden not in out


@given(
    st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4),
    st.deferred(lambda: SECRETS),
    st.text(max_size=10),
)
def test_no_fresh_secret_survives_in_json(
    others: dict[str, str], secret: tuple[str, str, str], key: str
) -> None:
    _kind, text, hidden = secret
    assume(not any(hidden in k + v for k, v in others.items()) and hidden not in key)
    args: dict[str, object] = dict(others)
    args[key] = {"value": text, "list": [text]}
    out = redact_json_text(json.dumps(args))
    assert hidden not in out
    assert hidden not in json.dumps(json.loads(out), ensure_ascii=False)


def test_marker_format() -> None:
    assert re.fullmatch(r"\[REDACTED:[a-z0-9_]+\]", redact_text("AKIAIOSFODNN7EXAMPLE"))


_SCREEN_PIECES = st.lists(
    st.sampled_from(
        [
            "a",
            "K",
            "EY",
            "key",
            "Pass",
            "sk-",
            "ghp_",
            "://",
            "\\u",
            "\\U",
            "\x00",
            "İ",
            "Σ",
            " ",
            "1",
        ]
    )
    | st.text(max_size=4),
    max_size=8,
).map("".join)


@given(st.lists(_SCREEN_PIECES, max_size=12))
def test_clean_texts_screens_each_text_as_alone_and_never_hides_a_change(texts: list[str]) -> None:
    """The batch screen is the per-text screen, whatever the neighbours (separators inside
    a text, case mappings that change lengths), and a text it calls clean is one that
    redaction leaves unchanged."""
    redactor = Redactor()
    clean = redactor.clean_texts(texts)
    assert clean == [redactor.is_clean_json_text(t) and "\\u" not in t.lower() for t in texts]
    for text, ok in zip(texts, clean, strict=True):
        if ok:
            assert redactor.redact_text(text) == text
            assert redactor.redact_json_text(text) == text


def test_clean_texts_with_extra_patterns_screens_nothing_out() -> None:
    redactor = Redactor({"ticket": r"TICKET-\d+"})
    assert redactor.clean_texts(["TICKET-1", "plain"]) == [False, False]


# --- fresh secrets of every kind ----------------------------------------------------------
#
# Each strategy draws a new secret in its kind's format and says what the redacted text
# must be: the marker in place of the secret, and the context a kind keeps (the URL's
# user and host, the AWS variable name) kept.

_UPPER_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_ALNUM = _UPPER_DIGITS + "abcdefghijklmnopqrstuvwxyz"
_URLSAFE = _ALNUM + "_-"
_B64 = _ALNUM + "+/"


def _chars(alphabet: str, min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=min_size, max_size=max_size)


def _whole(
    kind: str, secret: st.SearchStrategy[str]
) -> tuple[str, st.SearchStrategy[tuple[str, str, str]]]:
    """A kind that replaces the whole match, and its (kind, secret text, what it must
    become) strategy."""
    return kind, secret.map(lambda s: (kind, s, f"[REDACTED:{kind}]"))


def _aws_secret_key() -> st.SearchStrategy[tuple[str, str, str]]:
    name = st.sampled_from(
        [
            "aws_secret_access_key",
            "AWS_SECRET_ACCESS_KEY",
            "awsSecretKey",
            "aws.secret",
            "AWS_PRIVATE",
        ]
    )
    sep = st.sampled_from(["=", ": ", " = ", '="', "='"])
    return st.tuples(name, sep, _chars(_B64, 40, 40)).map(
        lambda t: ("aws_secret_key", t[0] + t[1] + t[2], t[0] + t[1] + "[REDACTED:aws_secret_key]")
    )


def _private_key() -> st.SearchStrategy[str]:
    label = st.sampled_from(["", "RSA ", "EC ", "OPENSSH ", "DSA ", "ENCRYPTED "])
    lines = st.lists(_chars(_B64 + "=", 1, 64), min_size=1, max_size=6).map("\n".join)
    return st.tuples(label, lines).map(
        lambda t: f"-----BEGIN {t[0]}PRIVATE KEY-----\n{t[1]}\n-----END {t[0]}PRIVATE KEY-----"
    )


def _azure_storage_key() -> st.SearchStrategy[tuple[str, str, str]]:
    return _chars(_B64, 86, 86).map(
        lambda k: (
            "azure_storage_key",
            f"AccountName=acct;AccountKey={k}==",
            "AccountName=acct;AccountKey=[REDACTED:azure_storage_key]",
        )
    )


def _cli_password() -> st.SearchStrategy[tuple[str, str, str]]:
    secret = _chars(_ALNUM + "-_.!$%*~@#", 1, 30)
    forms = st.sampled_from(
        [
            "curl -u alice:{}",
            "curl --user ci-bot:{}",
            "mysql -h db -u root -p{}",
            "app --password {}",
            "curl --user=ci-bot:{}",
            "sshpass -p {} ssh deploy@web1",
            "redis-cli -h cache -a {} ping",
        ]
    )
    return st.tuples(forms, secret).map(
        lambda t: ("cli_password", t[0].format(t[1]), t[0].format("[REDACTED:cli_password]"))
    )


def _url_password() -> st.SearchStrategy[tuple[str, str, str]]:
    scheme = st.sampled_from(["postgres", "mysql", "redis", "https", "amqp", "mongodb+srv", "s3"])
    user = _chars(_ALNUM + "._-", 1, 20)
    password = _chars(_ALNUM + "-_.!$%*~", 1, 30)
    host = st.sampled_from(["db.internal", "10.0.0.5:5432", "example.com", "cache:6379/0"])
    return st.tuples(scheme, user, password, host).map(
        lambda t: (
            "url_password",
            f"{t[0]}://{t[1]}:{t[2]}@{t[3]}",
            f"{t[0]}://{t[1]}:[REDACTED:url_password]@{t[3]}",
        )
    )


_FRESH_LIST = [
    _whole(
        "aws_access_key",
        st.tuples(
            st.sampled_from(["AKIA", "ASIA", "ABIA", "ACCA"]), _chars(_UPPER_DIGITS, 16, 16)
        ).map("".join)
        | _chars(_UPPER_DIGITS, 17, 17).map(lambda s: "A3T" + s),
    ),
    ("aws_secret_key", _aws_secret_key()),
    _whole(
        "github_token",
        st.tuples(
            st.sampled_from(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]), _chars(_ALNUM, 36, 80)
        ).map("".join)
        | _chars(_ALNUM + "_", 22, 90).map(lambda s: "github_pat_" + s),
    ),
    _whole(
        "gitlab_token",
        st.tuples(
            st.sampled_from(["glpat-", "gldt-", "glft-", "glsoat-", "glrt-", "glcbt-", "glptt-"]),
            _chars(_URLSAFE, 20, 40),
        ).map("".join),
    ),
    _whole(
        "slack_token",
        st.tuples(st.sampled_from("abposr"), _chars(_ALNUM + "-", 10, 50)).map(
            lambda t: f"xox{t[0]}-{t[1]}"
        ),
    ),
    _whole(
        "slack_webhook",
        st.tuples(
            st.sampled_from(["services", "workflows", "triggers"]), _chars(_URLSAFE + "/+", 16, 60)
        ).map(lambda t: f"https://hooks.slack.com/{t[0]}/{t[1]}"),
    ),
    _whole(
        "stripe_key",
        st.tuples(
            st.sampled_from("rs"), st.sampled_from(["live", "test"]), _chars(_ALNUM, 16, 40)
        ).map(lambda t: f"{t[0]}k_{t[1]}_{t[2]}"),
    ),
    _whole("anthropic_key", _chars(_URLSAFE, 20, 60).map(lambda s: "sk-ant-" + s)),
    _whole(
        "openai_key",
        st.tuples(
            st.sampled_from(["", "proj-", "svcacct-", "admin-"]),
            _chars(_URLSAFE, 20, 60).filter(lambda s: not s.startswith("ant-")),
        ).map(lambda t: f"sk-{t[0]}{t[1]}"),
    ),
    _whole(
        "jwt",
        st.tuples(_chars(_URLSAFE, 4, 60), _chars(_URLSAFE, 4, 120), _chars(_URLSAFE, 0, 86)).map(
            lambda t: f"eyJ{t[0]}.eyJ{t[1]}.{t[2]}"
        ),
    ),
    _whole("private_key", _private_key()),
    ("url_password", _url_password()),
    _whole("google_api_key", _chars(_URLSAFE, 35, 35).map(lambda s: "AIza" + s)),
    _whole("huggingface_token", _chars(string.ascii_letters, 34, 34).map(lambda s: "hf_" + s)),
    _whole("npm_token", _chars(_ALNUM, 36, 36).map(lambda s: "npm_" + s)),
    _whole(
        "sendgrid_key",
        st.tuples(_chars(_URLSAFE, 22, 22), _chars(_URLSAFE, 43, 43)).map(
            lambda t: f"SG.{t[0]}.{t[1]}"
        ),
    ),
    _whole(
        "azure_client_secret",
        st.tuples(
            _chars(_ALNUM + "_~.", 3, 3),
            st.sampled_from("0123456789"),
            _chars(_URLSAFE + "~.", 31, 34),
        ).map(lambda t: f"{t[0]}{t[1]}Q~{t[2]}"),
    ),
    ("azure_storage_key", _azure_storage_key()),
    ("cli_password", _cli_password()),
]
# kind -> a strategy of fresh secrets of that kind (all built-in kinds, checked below)
FRESH: dict[str, st.SearchStrategy[tuple[str, str, str]]] = dict(_FRESH_LIST)
FRESH_SECRETS = st.sampled_from(sorted(FRESH)).flatmap(lambda kind: FRESH[kind])


# Text around a secret: words and punctuation that hold no secret and no ``name: value``
# (those would rightly redact the neighbourhood too). Asserted, not assumed: see below.
_PLAIN = st.text(
    alphabet=st.sampled_from(list(_ALNUM + " .,!?()-_\n")) | st.characters(min_codepoint=0xC0),
    max_size=60,
)
_BOUNDARY = st.sampled_from([" ", "\n", "\t", " (", ") ", ", ", "; ", " <", "> ", " | "])
_JSON_KEYS = st.sampled_from(["query", "body", "note", "command", "path", "text", "args"])


def secret_of(text: str, expected: str) -> str:
    """The part of ``text`` that redaction replaces: what differs from ``expected``."""
    head = 0
    while head < min(len(text), len(expected)) and text[head] == expected[head]:
        head += 1
    tail = 0
    while (
        tail < min(len(text), len(expected)) - head
        and text[len(text) - 1 - tail] == expected[len(expected) - 1 - tail]
    ):
        tail += 1
    return text[head : len(text) - tail]


def _ruleset_case(rule: SecretRule) -> st.SearchStrategy[tuple[str, str, str]]:
    """Fresh matches of one ruleset rule, drawn from its own regex, with the secret it
    must replace (gitleaks' semantics: the secret group, else the first non-empty group),
    kept only when the rule would report it (a keyword present, entropy above the rule's
    threshold, no allowlist)."""

    def case(text: str) -> tuple[str, str, str] | None:
        m = rule.regex.fullmatch(text)
        if m is None or not any(k in text.lower() for k in rule.keywords):
            return None  # a rule runs only when one of its keywords is present (gitleaks too)
        group = rule.secret_group
        if group is None:
            group = next((g for g in range(1, rule.regex.groups + 1) if m.group(g)), 0)
        secret = m.group(group)
        if len(secret) < 8 or (rule.entropy and shannon_entropy(secret) <= rule.entropy):
            return None
        if any(a.allows(secret, m.group(0), text) for a in rule.allowlists):
            return None
        return (rule.kind, text, secret)

    return st.from_regex(rule.regex, fullmatch=True).map(case).filter(bool)  # type: ignore[arg-type]


# (kind, text holding a secret, the secret) for every built-in kind and every ruleset rule;
# secrets of 8 characters or more, so that "not in the output" cannot hold by chance.
FRESH_HIDDEN = FRESH_SECRETS.map(lambda s: (s[0], s[1], secret_of(s[1], s[2]))).filter(
    lambda s: len(s[2]) >= 8
)
RULESET_SECRETS: st.SearchStrategy[tuple[str, str, str]] = st.sampled_from(RULESET).flatmap(
    _ruleset_case
)
SECRETS = FRESH_HIDDEN | RULESET_SECRETS


def test_fresh_secrets_cover_every_builtin_kind() -> None:
    assert set(FRESH) == {k.kind for k in BUILTIN_KINDS}


@given(FRESH_SECRETS, _PLAIN, _BOUNDARY, _BOUNDARY, _PLAIN)
def test_a_fresh_secret_in_text_becomes_its_marker_and_the_rest_stays(
    secret: tuple[str, str, str], prefix: str, sep_a: str, sep_b: str, suffix: str
) -> None:
    _kind, text, expected = secret
    assume(redact_text(prefix) == prefix and redact_text(suffix) == suffix)
    out = redact_text(prefix + sep_a + text + sep_b + suffix)
    assert out == prefix + sep_a + expected + sep_b + suffix


@given(
    FRESH_SECRETS,
    _PLAIN,
    _PLAIN,
    st.dictionaries(_JSON_KEYS, _PLAIN, max_size=4),
    _JSON_KEYS,
    st.integers(min_value=0, max_value=2),
    st.booleans(),
)
def test_a_fresh_secret_in_json_becomes_its_marker_and_the_rest_stays(
    secret: tuple[str, str, str],
    prefix: str,
    suffix: str,
    others: dict[str, str],
    key: str,
    depth: int,
    alone: bool,
) -> None:
    """Anywhere in a document: nested in objects and lists, the whole string or part of it."""
    _kind, text, expected = secret
    assume(all(redact_text(t) == t for t in (prefix, suffix, *others.values())))

    def nest(value: object) -> object:
        for _ in range(depth):
            value = {"args": [value]}
        return value

    document = dict(others)
    document[key] = nest(text if alone else f"{prefix} {text} {suffix}")  # type: ignore[assignment]
    out = json.loads(redact_json_text(json.dumps(document)))
    wanted = dict(others)
    wanted[key] = nest(expected if alone else f"{prefix} {expected} {suffix}")  # type: ignore[assignment]
    assert out == wanted


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ('{"dbPassword": "hunter2"}', "hunter2"),
        ('{"pw": "hunter2"}', "hunter2"),
        ("PW=hunter2 ./run", "hunter2"),
        ('{"env": [{"name": "DB_PASSWORD", "value": "hunter2"}]}', "hunter2"),
        ('[{"Key": "db-pass", "Value": "hunter2"}]', "hunter2"),
        ('{"command": "mysql -h db -u root -phunter2x app"}', "hunter2x"),
        ('{"command": "curl -u admin:hunter2 https://x"}', "hunter2"),
        ('{"command": "curl --user=admin:hunter2 https://x"}', "hunter2"),
        ('{"command": "mysql -u root -p\'hunter2x\' app"}', "hunter2x"),
        ('{"command": "sshpass -p hunter2 ssh deploy@web1"}', "hunter2"),
        ('{"command": "sshpass -phunter2 ssh deploy@web1"}', "hunter2"),
        ('{"command": "redis-cli -h cache -a hunter2 ping"}', "hunter2"),
        ('{"command": "app --password=hunter2 --verbose"}', "hunter2"),
        ('{"command": "PGPASSWORD=hunter2 psql -h db -U app"}', "hunter2"),
        ("PGPASSWORD='hunter2' pg_dump app", "hunter2"),
        ("SSHPASS=hunter2 sshpass -e ssh web1", "hunter2"),
        ('{"PGPASSWORD": "hunter2"}', "hunter2"),
        ('{"Db_PassWord": "hunter2"}', "hunter2"),
        (
            '{"Parameters": [{"ParameterKey": "DbPassword", "ParameterValue": "hunter2"}]}',
            "hunter2",
        ),
        ('{"Tags": [{"TagName": "sshpass", "TagValue": "hunter2"}]}', "hunter2"),
    ],
)
def test_password_names_in_any_casing_pairs_and_command_lines(text: str, secret: str) -> None:
    out = redact_json_text(text)
    assert secret not in out and "[REDACTED:" in out, out


def test_a_pair_whose_name_is_no_secret_keeps_its_value() -> None:
    text = '{"env": [{"name": "HOME", "value": "/root"}, {"name": "pwd", "value": "/srv"}]}'
    assert "/root" in redact_json_text(text)


def test_log_records_are_redacted_message_arguments_and_traceback() -> None:
    """A log line that quotes a value (an error's text, a span name) keeps no secret."""
    token = PLANTED["github_token"][0]
    logger = logging.getLogger("callward.test.redact")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        redact_logs(logger)
        redact_logs(logger)  # idempotent: one filter per handler
        assert len(handler.filters) == 1
        logger.warning("backend said %r for %s", f"bad {token}", "x")
        try:
            raise ValueError(f"cannot parse {token}")
        except ValueError:
            logger.exception("Export failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert token not in out
    assert out.count("[REDACTED:github_token]") == 2 and "ValueError" in out


@settings(suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(RULESET_SECRETS, _PLAIN, _PLAIN)
def test_a_fresh_secret_of_any_ruleset_rule_is_redacted_in_text_and_json(
    secret: tuple[str, str, str], prefix: str, suffix: str
) -> None:
    kind, text, hidden = secret
    assume(hidden not in prefix and hidden not in suffix)
    out = redact_text(f"{prefix} {text} {suffix}")
    assert hidden not in out, kind
    assert "[REDACTED:" in out
    document = json.loads(redact_json_text(json.dumps({"note": text, "list": [prefix, text]})))
    assert hidden not in json.dumps(document, ensure_ascii=False), kind


@pytest.mark.timeout(300)
def test_hostile_runs_of_every_ruleset_keyword_finish() -> None:
    """A run of a rule's keyword (``sumosumo...``, ``okta=okta=...``) is the input that made
    gitleaks' vendor rules take seconds per 10 KB under ``re`` before they were bounded
    (callward/secret_rules.py, ``bounded``); a timeout, not a timing, is what fails here."""
    for keyword in sorted({k for rule in RULESET for k in rule.keywords}):
        for unit in (keyword, keyword + "=", keyword + " : "):
            text = unit * (10_000 // len(unit))
            out = redact_text(text)
            assert len(out) <= len(text) + 60 * count_redactions(out)
