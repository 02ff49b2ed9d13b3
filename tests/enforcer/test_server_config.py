"""The server config: explicit argument beats environment beats default; bad values refused."""

from __future__ import annotations

import pytest

from callward.enforcer.server_config import (
    ENV_OF,
    EnforcerConfig,
    make_server_config,
    validate_server_config,
)


def test_defaults_when_nothing_is_given() -> None:
    assert make_server_config(environ={}) == EnforcerConfig()


def test_environment_fills_what_no_argument_gives() -> None:
    env = {
        ENV_OF["listen"]: "0.0.0.0:7000",
        ENV_OF["pending_ttl_s"]: "30",
        ENV_OF["max_workers"]: "3",
    }
    got = make_server_config(environ=env)
    assert (got.listen, got.pending_ttl_s, got.max_workers) == ("0.0.0.0:7000", 30.0, 3)
    assert got.max_pending == EnforcerConfig().max_pending


def test_explicit_argument_beats_the_environment() -> None:
    env = {ENV_OF["listen"]: "0.0.0.0:7000", ENV_OF["max_workers"]: "3"}
    got = make_server_config(listen="127.0.0.1:0", environ=env)
    assert (got.listen, got.max_workers) == ("127.0.0.1:0", 3)


def test_every_field_has_an_environment_variable() -> None:
    from dataclasses import fields

    assert set(ENV_OF) == {f.name for f in fields(EnforcerConfig)}
    assert len(set(ENV_OF.values())) == len(ENV_OF)


def test_non_numeric_environment_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match=ENV_OF["max_workers"]):
        make_server_config(environ={ENV_OF["max_workers"]: "many"})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"listen": "127.0.0.1:65536"}, "PORT in 0..65535"),
        ({"listen": ":50051"}, "HOST:PORT"),
        ({"max_workers": 0}, "max_workers"),
        ({"pending_ttl_s": float("inf")}, "pending_ttl_s"),
        ({"pending_ttl_s": 0.0}, "pending_ttl_s"),
        ({"max_pending": 0}, "max_pending"),
        ({"housekeeping_interval_s": 0.0}, "housekeeping_interval_s"),
        ({"grace_s": -1.0}, "grace_s"),
    ],
)
def test_unusable_values_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_server_config(EnforcerConfig(**fields))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        make_server_config(environ={}, **fields)  # type: ignore[arg-type]
