"""The collector's one configuration: explicit argument > environment variable > default."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from callward.auth import tls_problems

MIB = 1024 * 1024

# The OTLP/gRPC default port; 0 asks the OS for a free one.
DEFAULT_LISTEN = "127.0.0.1:4317"

ENV_VARS = {
    "data_dir": "CALLWARD_COLLECTOR_DATA_DIR",
    "listen": "CALLWARD_COLLECTOR_LISTEN",
    "forward": "CALLWARD_COLLECTOR_FORWARD",
    "flush_interval_s": "CALLWARD_COLLECTOR_FLUSH_INTERVAL",
    "idle_flush_s": "CALLWARD_COLLECTOR_IDLE_FLUSH",
    "batch_size": "CALLWARD_COLLECTOR_BATCH_SIZE",
    "max_request_bytes": "CALLWARD_COLLECTOR_MAX_REQUEST_BYTES",
    "max_value_bytes": "CALLWARD_COLLECTOR_MAX_VALUE_BYTES",
    "max_future_skew_s": "CALLWARD_COLLECTOR_MAX_FUTURE_SKEW",
    "max_pending_spans": "CALLWARD_COLLECTOR_MAX_PENDING_SPANS",
    "forward_queue_bytes": "CALLWARD_COLLECTOR_FORWARD_QUEUE_BYTES",
    "workers": "CALLWARD_COLLECTOR_WORKERS",
    "decode_workers": "CALLWARD_COLLECTOR_DECODE_WORKERS",
    "fsync": "CALLWARD_COLLECTOR_FSYNC",
    "tokens": "CALLWARD_COLLECTOR_TOKENS",
    "tls_cert": "CALLWARD_COLLECTOR_TLS_CERT",
    "tls_key": "CALLWARD_COLLECTOR_TLS_KEY",
    "tls_client_ca": "CALLWARD_COLLECTOR_TLS_CLIENT_CA",
}


@dataclass(frozen=True)
class CollectorConfig:
    """Everything the collector needs; see collector/README.md for the trade-offs."""

    data_dir: Path
    listen: str = DEFAULT_LISTEN
    forward: str = ""  # OTLP/gRPC endpoint to pass spans on to; "" = none
    flush_interval_s: float = 2.0  # the longest a span waits in the spool before Parquet
    idle_flush_s: float = 0.25  # flush once Exports pause this long; 0 = only size/interval
    batch_size: int = 20_000  # spans per Parquet flush (bigger files, fewer of them)
    max_request_bytes: int = 64 * MIB  # larger Exports get RESOURCE_EXHAUSTED
    max_value_bytes: int = 64 * 1024  # longer attribute values are cut, with a marker
    max_future_skew_s: float = 24 * 3600.0  # spans starting later than now + this are rejected
    max_pending_spans: int = 200_000  # beyond this, Exports get UNAVAILABLE (retry later)
    forward_queue_bytes: int = 256 * MIB  # on-disk queue while the forward backend is down
    workers: int = 8  # gRPC handler threads
    decode_workers: int = 2  # decoding processes; 0 decodes in the gRPC threads
    fsync: bool = True  # False only for throwaway benchmarks: acks are then not durable
    tokens: str = ""  # tokens file: an Export without a valid bearer token is refused
    tls_cert: str = ""  # with tls_key: serve OTLP over TLS
    tls_key: str = ""
    tls_client_ca: str = ""  # require client certificates signed by this CA


def _parse(name: str, raw: str, kind: Any) -> Any:
    if kind is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{ENV_VARS[name]}: expected a boolean, got {raw!r}")
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{ENV_VARS[name]}: expected {kind.__name__}, got {raw!r}") from None


_KINDS: dict[str, Any] = {
    "data_dir": Path,
    "listen": str,
    "forward": str,
    "flush_interval_s": float,
    "idle_flush_s": float,
    "batch_size": int,
    "max_request_bytes": int,
    "max_value_bytes": int,
    "max_future_skew_s": float,
    "max_pending_spans": int,
    "forward_queue_bytes": int,
    "workers": int,
    "decode_workers": int,
    "fsync": bool,
    "tokens": str,
    "tls_cert": str,
    "tls_key": str,
    "tls_client_ca": str,
}


def load_config(environ: Mapping[str, str] | None = None, **explicit: Any) -> CollectorConfig:
    """Build and validate the config. ``explicit`` values that are None are not set."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(CollectorConfig):
        if explicit.get(f.name) is not None:
            values[f.name] = explicit[f.name]
        elif env.get(ENV_VARS[f.name], "") != "":
            values[f.name] = _parse(f.name, env[ENV_VARS[f.name]], _KINDS[f.name])
    unknown = set(explicit) - {f.name for f in fields(CollectorConfig)}
    if unknown:
        raise ValueError(f"unknown collector setting(s): {', '.join(sorted(unknown))}")
    if "data_dir" not in values:
        raise ValueError(f"a data directory is required (--data-dir or {ENV_VARS['data_dir']})")
    values["data_dir"] = Path(values["data_dir"])
    config = CollectorConfig(**values)
    _validate(config)
    return config


def _validate(c: CollectorConfig) -> None:
    host, sep, port = c.listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address must be HOST:PORT, got {c.listen!r}")
    positive = {
        "flush_interval_s": c.flush_interval_s,
        "batch_size": c.batch_size,
        "max_request_bytes": c.max_request_bytes,
        "max_value_bytes": c.max_value_bytes,
        "max_pending_spans": c.max_pending_spans,
        "forward_queue_bytes": c.forward_queue_bytes,
        "workers": c.workers,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if c.decode_workers < 0:
        raise ValueError(f"decode_workers must not be negative, got {c.decode_workers}")
    if c.idle_flush_s < 0:
        raise ValueError(f"idle_flush_s must not be negative, got {c.idle_flush_s}")
    if c.max_future_skew_s < 0:
        raise ValueError(f"max_future_skew_s must not be negative, got {c.max_future_skew_s}")
    problems = tls_problems(c.tls_cert, c.tls_key, c.tls_client_ca)
    if problems:
        raise ValueError("; ".join(problems))
