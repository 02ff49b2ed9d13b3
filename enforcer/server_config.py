"""The enforcer server's one typed config: how calls are held, how the server listens and
whom it lets call (tokens file, TLS files; :mod:`callward.grpc_auth` reads them).

:func:`make_server_config` is the one place that fills defaults and validates; an explicit
argument beats the environment, which beats the default. A config that reaches the
service has been through :func:`validate_server_config`, so a bad listen address or a
non-positive TTL is refused before anything binds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from callward.auth import tls_problems

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_MAX_WORKERS = 8
DEFAULT_PENDING_TTL_S = 600.0
DEFAULT_MAX_PENDING = 100_000
DEFAULT_HOUSEKEEPING_INTERVAL_S = 5.0
DEFAULT_GRACE_S = 2.0

ENV_OF = {
    "listen": "CALLWARD_ENFORCER_LISTEN",
    "max_workers": "CALLWARD_ENFORCER_WORKERS",
    "pending_ttl_s": "CALLWARD_ENFORCER_PENDING_TTL_S",
    "max_pending": "CALLWARD_ENFORCER_MAX_PENDING",
    "housekeeping_interval_s": "CALLWARD_ENFORCER_HOUSEKEEPING_INTERVAL_S",
    "grace_s": "CALLWARD_ENFORCER_GRACE_S",
    "tokens": "CALLWARD_ENFORCER_TOKENS",
    "tls_cert": "CALLWARD_ENFORCER_TLS_CERT",
    "tls_key": "CALLWARD_ENFORCER_TLS_KEY",
    "tls_client_ca": "CALLWARD_ENFORCER_TLS_CLIENT_CA",
}
"""Environment variable read for each field when no explicit value is given."""


@dataclass(frozen=True)
class EnforcerConfig:
    """How the service holds calls and how the server listens."""

    listen: str = DEFAULT_LISTEN
    max_workers: int = DEFAULT_MAX_WORKERS
    pending_ttl_s: float = DEFAULT_PENDING_TTL_S
    """An allowed call with no Report after this long is closed without an outcome."""
    max_pending: int = DEFAULT_MAX_PENDING
    """Beyond this many pending calls the oldest is closed early (bounded memory)."""
    housekeeping_interval_s: float = DEFAULT_HOUSEKEEPING_INTERVAL_S
    """How often expired pending calls and ended rate-limit windows are dropped."""
    grace_s: float = DEFAULT_GRACE_S
    """How long a stopping server lets running calls finish."""
    tokens: str = ""
    """Tokens file (bearer token -> grant); set, every Check and Report must carry a token
    (or a client certificate, with ``tls_client_ca``). "" = none."""
    tls_cert: str = ""
    """The server's certificate chain (PEM); with ``tls_key``, the server speaks TLS."""
    tls_key: str = ""
    tls_client_ca: str = ""
    """CA (PEM) that client certificates must be signed by; set, a client without one is
    refused at the handshake, and the certificate's name is the caller's grant."""

    def validated(self) -> EnforcerConfig:
        """This config, checked by :func:`validate_server_config` (raises ``ValueError``)."""
        return validate_server_config(self)


def validate_server_config(config: EnforcerConfig) -> EnforcerConfig:
    """Return ``config`` unchanged if every field is usable, else raise ``ValueError``."""
    host, sep, port = config.listen.rpartition(":")
    # gRPC would silently take a port above 65535 modulo 65536: refuse it here.
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen must be HOST:PORT with PORT in 0..65535, got {config.listen!r}")
    if config.max_workers < 1:
        raise ValueError("max_workers must be at least 1")
    if not (config.pending_ttl_s > 0 and math.isfinite(config.pending_ttl_s)):
        raise ValueError("pending_ttl_s must be a positive number of seconds")
    if config.max_pending < 1:
        raise ValueError("max_pending must be at least 1")
    if not (config.housekeeping_interval_s > 0 and math.isfinite(config.housekeeping_interval_s)):
        raise ValueError("housekeeping_interval_s must be a positive number of seconds")
    if not (config.grace_s >= 0 and math.isfinite(config.grace_s)):
        raise ValueError("grace_s must be a number of seconds >= 0")
    problems = tls_problems(config.tls_cert, config.tls_key, config.tls_client_ca)
    if problems:
        raise ValueError("; ".join(problems))
    return config


def make_server_config(
    *,
    listen: str | None = None,
    max_workers: int | None = None,
    pending_ttl_s: float | None = None,
    max_pending: int | None = None,
    housekeeping_interval_s: float | None = None,
    grace_s: float | None = None,
    tokens: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_client_ca: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> EnforcerConfig:
    """A validated config: each field from its argument, else :data:`ENV_OF`, else default.

    ``environ`` defaults to ``os.environ``; a value there that is not a number where one is
    expected raises ``ValueError`` naming the variable.
    """
    env = os.environ if environ is None else environ
    given = {
        "listen": listen,
        "max_workers": max_workers,
        "pending_ttl_s": pending_ttl_s,
        "max_pending": max_pending,
        "housekeeping_interval_s": housekeeping_interval_s,
        "grace_s": grace_s,
        "tokens": tokens,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "tls_client_ca": tls_client_ca,
    }
    values: dict[str, object] = {}
    for field in fields(EnforcerConfig):
        value: object = given[field.name]
        if value is None:
            text = env.get(ENV_OF[field.name], "").strip()
            if not text:
                continue  # the dataclass default
            value = _from_env(ENV_OF[field.name], text, type(getattr(EnforcerConfig, field.name)))
        values[field.name] = value
    return validate_server_config(EnforcerConfig(**values))  # type: ignore[arg-type]


def _from_env(name: str, text: str, kind: type) -> object:
    if kind is str:
        return text
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name} must be a {kind.__name__}, got {text!r}") from None


__all__ = [
    "ENV_OF",
    "EnforcerConfig",
    "make_server_config",
    "validate_server_config",
]
