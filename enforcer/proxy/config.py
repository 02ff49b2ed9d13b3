"""The proxy's one typed config, and how it becomes a gate and an upstream connector.

Explicit options beat environment variables beat defaults (``--otlp-endpoint`` over
``OTEL_EXPORTER_OTLP_ENDPOINT``). :func:`make_config` validates everything at once, so
a bad command line fails before any child process is started or port is opened.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from callward.auth import TokensInvalid, TokenTable, load_tokens
from callward.enforcer.errors import PolicyInvalid
from callward.enforcer.policy import CompiledPolicy, load_policy
from callward.enforcer.proxy.gate import (
    DEFAULT_ENFORCER_TIMEOUT,
    Gate,
    InProcessChecker,
    RemoteChecker,
)
from callward.enforcer.proxy.relay import DEFAULT_CALL_TIMEOUT
from callward.enforcer.proxy.stdio import DEFAULT_MAX_MESSAGE_BYTES
from callward.enforcer.proxy.upstream import Connector, command_upstream, url_upstream
from callward.enforcer.telemetry import CallRecorder

SERVICE_NAME = "callward-proxy"


class ConfigError(Exception):
    """A command line the proxy cannot run with; ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class ProxyConfig:
    policy_path: Path | None = None
    command: tuple[str, ...] = ()
    upstream_url: str = ""
    listen_host: str = ""
    listen_port: int = 0
    tokens_path: Path | None = None
    grant: str = ""
    server: str = ""
    allowed_origins: tuple[str, ...] = ()
    enforcer: str = ""
    enforcer_token: str = field(default="", repr=False)
    enforcer_timeout: float = DEFAULT_ENFORCER_TIMEOUT
    fail_open: bool = False
    call_timeout: float = DEFAULT_CALL_TIMEOUT
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    otlp_endpoint: str = ""
    upstream_headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def listens(self) -> bool:
        return bool(self.listen_host)


def _host_port(text: str, problems: list[str], what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        problems.append(f"{what} must be HOST:PORT, got {text!r}")
        return "", 0
    return host, int(port)


def make_config(
    *,
    policy: str | None,
    command: Sequence[str] = (),
    upstream: str = "",
    listen: str = "",
    tokens: str | None = None,
    grant: str = "",
    server: str = "",
    allow_origins: Sequence[str] = (),
    enforcer: str = "",
    enforcer_token_file: str = "",
    enforcer_timeout: float = DEFAULT_ENFORCER_TIMEOUT,
    fail_open: bool = False,
    call_timeout: float = DEFAULT_CALL_TIMEOUT,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    otlp_endpoint: str = "",
    environ: Mapping[str, str] | None = None,
) -> ProxyConfig:
    """Validate the options and fill defaults; raises :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    problems: list[str] = []
    if not policy and not enforcer:
        problems.append("give --policy FILE (and/or --enforcer HOST:PORT)")
    if command and upstream:
        problems.append("give either --upstream URL or a server command after --, not both")
    if not command and not upstream:
        problems.append("give the server to front: a command after -- or --upstream URL")
    if command and shutil.which(command[0]) is None:
        # Caught here, before serving: a missing server found later looks to the client
        # like a server that closed, and the proxy would exit 0.
        problems.append(f"server command {command[0]!r} not found: is it installed and on PATH?")
    if upstream:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(f"--upstream must be an http(s) URL, got {upstream!r}")
    host, port = _host_port(listen, problems, "--listen") if listen else ("", 0)
    if tokens and not listen:
        problems.append("--tokens only applies with --listen (stdio takes --grant)")
    if enforcer:
        _host_port(enforcer, problems, "--enforcer")
    enforcer_token = ""
    if enforcer_token_file:
        if not enforcer:
            problems.append("--enforcer-token-file only applies with --enforcer")
        enforcer_token = _read_token(enforcer_token_file, problems)
    if not enforcer_timeout > 0:
        problems.append("--enforcer-timeout must be positive")
    if not call_timeout > 0:
        problems.append("--call-timeout must be positive")
    if max_message_bytes < 1024:
        problems.append("--max-message-bytes must be at least 1024")
    for origin in allow_origins:
        if origin != "*" and "://" not in origin:
            problems.append(f"--allow-origin wants scheme://host[:port], got {origin!r}")
    if problems:
        raise ConfigError(problems)
    return ProxyConfig(
        policy_path=Path(policy) if policy else None,
        command=tuple(command),
        upstream_url=upstream,
        listen_host=host,
        listen_port=port,
        tokens_path=Path(tokens) if tokens else None,
        grant=grant,
        server=server,
        allowed_origins=tuple(allow_origins),
        enforcer=enforcer,
        enforcer_token=enforcer_token,
        enforcer_timeout=enforcer_timeout,
        fail_open=fail_open,
        call_timeout=call_timeout,
        max_message_bytes=max_message_bytes,
        otlp_endpoint=otlp_endpoint or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
    )


def _read_token(path: str, problems: list[str]) -> str:
    """The token in ``path``: its first line, without surrounding whitespace."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        problems.append(f"--enforcer-token-file {path}: unreadable ({e})")
        return ""
    token = text.strip().split("\n", 1)[0].strip()
    if not token:
        problems.append(f"--enforcer-token-file {path}: the file is empty")
    return token


def load_policy_of(config: ProxyConfig) -> CompiledPolicy | None:
    """The policy (raises :class:`PolicyInvalid` with the validation report)."""
    return load_policy(config.policy_path) if config.policy_path is not None else None


def load_tokens_of(config: ProxyConfig) -> TokenTable | None:
    return load_tokens(config.tokens_path) if config.tokens_path is not None else None


def make_recorder(config: ProxyConfig) -> CallRecorder | None:
    """Spans are exported only when an OTLP endpoint is configured."""
    if not config.otlp_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return CallRecorder(SERVICE_NAME, OTLPSpanExporter(endpoint=config.otlp_endpoint))


def make_gate(
    config: ProxyConfig, policy: CompiledPolicy | None, recorder: CallRecorder | None
) -> Gate:
    if config.enforcer:
        checker: InProcessChecker | RemoteChecker = RemoteChecker(
            config.enforcer, config.enforcer_timeout, token=config.enforcer_token
        )
    else:
        assert policy is not None
        checker = InProcessChecker(policy)
    if recorder is not None and policy is not None:
        recorder.publish_policy(policy.version, policy.canonical, policy.source)
    return Gate(
        checker, policy=policy, recorder=recorder, server=config.server, fail_open=config.fail_open
    )


def make_connector(config: ProxyConfig) -> Connector:
    if config.upstream_url:
        return url_upstream(config.upstream_url, headers=dict(config.upstream_headers) or None)
    return command_upstream(config.command[0], config.command[1:])


__all__ = [
    "SERVICE_NAME",
    "ConfigError",
    "PolicyInvalid",
    "ProxyConfig",
    "TokensInvalid",
    "load_policy_of",
    "load_tokens_of",
    "make_config",
    "make_connector",
    "make_gate",
    "make_recorder",
]
