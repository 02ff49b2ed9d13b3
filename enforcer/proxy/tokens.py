"""The proxy's bearer tokens: the shared tokens file lives in :mod:`callward.auth`."""

from callward.auth import (
    MIN_TOKEN_LENGTH,
    Bearer,
    TokensInvalid,
    TokenTable,
    load_tokens,
    parse_tokens,
    token_digest,
)

__all__ = [
    "MIN_TOKEN_LENGTH",
    "Bearer",
    "TokenTable",
    "TokensInvalid",
    "load_tokens",
    "parse_tokens",
    "token_digest",
]
