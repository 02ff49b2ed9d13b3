"""The proxy's config: settings that only make sense together, secrets read at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from callward.enforcer.proxy.config import ConfigError, make_config


def test_the_enforcer_token_is_read_from_its_file_and_kept_out_of_the_repr(
    tmp_path: Path,
) -> None:
    path = tmp_path / "token"
    path.write_text("proxy-token-0123456789abcdef\n")
    config = make_config(
        policy=None, upstream="http://127.0.0.1:1/mcp", enforcer="127.0.0.1:1",
        enforcer_token_file=str(path), environ={},
    )  # fmt: skip
    assert config.enforcer_token == "proxy-token-0123456789abcdef"
    assert "proxy-token" not in repr(config)


@pytest.mark.parametrize(
    ("content", "enforcer", "says"),
    [
        (None, "127.0.0.1:1", "unreadable"),
        ("\n  \n", "127.0.0.1:1", "empty"),
        ("proxy-token-0123456789abcdef", "", "only applies with --enforcer"),
    ],
)
def test_an_unusable_enforcer_token_file_is_refused(
    tmp_path: Path, content: str | None, enforcer: str, says: str
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as refused:
        make_config(
            policy=str(tmp_path / "p.yaml"), upstream="http://127.0.0.1:1/mcp",
            enforcer=enforcer, enforcer_token_file=str(path), environ={},
        )  # fmt: skip
    assert any(says in p for p in refused.value.problems), refused.value.problems
