"""Redaction lives in :mod:`callward.redact` (shared by the enforcer and the collector);
these names are re-exported so existing imports keep working."""

from __future__ import annotations

from callward.redact import (
    BUILTIN_KINDS,
    ENV_PATTERNS,
    MARKER_PREFIX,
    MIN_ENTROPY_BITS,
    MIN_SECRET_LENGTH,
    Redactor,
    SecretKind,
    count_redactions,
    default_redactor,
    load_patterns,
    looks_random,
    marker,
    redact_json_text,
    redact_text,
    shannon_entropy,
)

__all__ = [
    "BUILTIN_KINDS",
    "ENV_PATTERNS",
    "MARKER_PREFIX",
    "MIN_ENTROPY_BITS",
    "MIN_SECRET_LENGTH",
    "Redactor",
    "SecretKind",
    "count_redactions",
    "default_redactor",
    "load_patterns",
    "looks_random",
    "marker",
    "redact_json_text",
    "redact_text",
    "shannon_entropy",
]
