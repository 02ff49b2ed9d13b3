"""Bearer tokens and the grant label each one stands for, for every callward server
that authenticates its callers (the HTTP proxy, the gRPC enforcer, the collector).

A tokens file (YAML or JSON) lists entries with either the token itself or its SHA-256
hex digest, so the file can be kept without the secrets in it::

    tokens:
      - token: "alice-7bd1c0e9f2a34f6b"
        grant: alice
      - sha256: "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
        grant: ci-bot

Tokens are looked up by their digest, so no secret is ever compared byte by byte.
Loading is all-or-nothing: every problem is reported at once and nothing is loaded.

:class:`Principal` (who an authenticated caller is) and the rule for a server's TLS file
settings (:func:`tls_problems`) live here too, so that the enforcer's core and each
server's config use them without importing gRPC.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MIN_TOKEN_LENGTH = 16
"""Shorter tokens are refused: they are guessable by anyone who can reach the port."""

MAX_TOKEN_CHARS = 4096
"""A longer presented token is refused without hashing it."""
MAX_TOKENS_FILE_BYTES = 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ENTRY_KEYS = {"token", "sha256", "grant", "note"}


class TokensInvalid(Exception):
    """A tokens file that cannot be used; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class Bearer:
    """Who a valid token says the caller is."""

    grant: str
    fingerprint: str
    """The first 16 hex digits of the token's digest: safe to log, binds a session."""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    grant: str
    """The grant its credential stands for: the one limits and conditions use."""
    id: str
    """``token:<fingerprint>`` or ``cert:<name>``: safe to log, binds a Report to its Check."""


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenTable:
    """Token digest -> grant label."""

    def __init__(self, grants_by_digest: Mapping[str, str]):
        self._by_digest = dict(grants_by_digest)

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, token: str) -> Bearer | None:
        """The grant of ``token``, or None when the token is unknown."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        digest = token_digest(token)
        grant = self._by_digest.get(digest)
        return None if grant is None else Bearer(grant, digest[:16])

    def from_authorization(self, header: str | None) -> Bearer | None:
        """Read ``Authorization: Bearer <token>`` (RFC 6750; the scheme is case-insensitive)."""
        if not header:
            return None
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.lookup(token.strip())


def parse_tokens(doc: Any, source: str = "<tokens>") -> TokenTable:
    """Validate a parsed tokens document; raises :class:`TokensInvalid` listing every problem."""
    problems: list[str] = []
    entries = doc.get("tokens") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or set(doc) - {"tokens"}:
        problems.append("expected an object with one key, 'tokens'")
    if not isinstance(entries, list) or not entries:
        problems.append("'tokens' must be a non-empty list")
        raise TokensInvalid(source, problems)
    table: dict[str, str] = {}
    for i, entry in enumerate(entries):
        where = f"tokens[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected an object")
            continue
        unknown = sorted(str(k) for k in set(entry) - _ENTRY_KEYS)
        if unknown:
            problems.append(f"{where}: unknown field(s) {', '.join(unknown)}")
        grant = entry.get("grant")
        if not isinstance(grant, str) or not grant.strip():
            problems.append(f"{where}: 'grant' must be a non-empty string")
            continue
        token, digest = entry.get("token"), entry.get("sha256")
        if (token is None) == (digest is None):
            problems.append(f"{where}: give exactly one of 'token' or 'sha256'")
            continue
        if token is not None:
            if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
                problems.append(f"{where}: 'token' must be a string of {MIN_TOKEN_LENGTH}+ chars")
                continue
            if any(c.isspace() for c in token):
                problems.append(f"{where}: 'token' must not contain whitespace")
                continue
            digest = token_digest(token)
        elif not isinstance(digest, str) or not _HEX64.match(digest):
            problems.append(f"{where}: 'sha256' must be 64 lowercase hex digits")
            continue
        assert isinstance(digest, str)
        if digest in table:
            problems.append(f"{where}: the same token is listed twice")
            continue
        table[digest] = grant
    if problems:
        raise TokensInvalid(source, problems)
    return TokenTable(table)


def load_tokens(path: str | Path) -> TokenTable:
    """Read and validate a tokens file (YAML or JSON)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise TokensInvalid(str(p), [f"unreadable: {e.strerror or e}"]) from None
    if len(raw) > MAX_TOKENS_FILE_BYTES:
        raise TokensInvalid(str(p), [f"file over {MAX_TOKENS_FILE_BYTES} bytes"])
    try:
        doc = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise TokensInvalid(str(p), [f"not valid YAML/JSON: {e}"]) from None
    return parse_tokens(doc, str(p))


def tls_problems(cert: str, key: str, client_ca: str) -> list[str]:
    """What is wrong with a combination of TLS file settings ("" = not given)."""
    problems = []
    if bool(cert) != bool(key):
        problems.append("--tls-cert and --tls-key go together")
    if client_ca and not (cert and key):
        problems.append("--tls-client-ca needs --tls-cert and --tls-key (the server's own)")
    return problems


__all__ = [
    "MIN_TOKEN_LENGTH",
    "Bearer",
    "Principal",
    "TokenTable",
    "TokensInvalid",
    "load_tokens",
    "parse_tokens",
    "tls_problems",
    "token_digest",
]
