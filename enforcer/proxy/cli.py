"""``callward proxy``: put the policy between an MCP client and a real MCP server.

In stdio mode our stdout is the MCP channel, so everything human-readable (logs, the
startup banner, errors) goes to stderr.
"""

from __future__ import annotations

import logging
import signal
import sys

import anyio
import typer
from rich.console import Console

from callward.auth import TokenTable
from callward.enforcer.proxy.config import (
    ConfigError,
    PolicyInvalid,
    ProxyConfig,
    TokensInvalid,
    load_policy_of,
    load_tokens_of,
    make_config,
    make_connector,
    make_gate,
    make_recorder,
)
from callward.enforcer.proxy.gate import DEFAULT_ENFORCER_TIMEOUT, Gate
from callward.enforcer.proxy.relay import DEFAULT_CALL_TIMEOUT
from callward.enforcer.proxy.stdio import DEFAULT_MAX_MESSAGE_BYTES
from callward.redact import redact_logs

err = Console(stderr=True, highlight=False, soft_wrap=True)


def proxy(
    command: list[str] = typer.Argument(
        None, help="The stdio server to launch, after --: callward proxy … -- CMD ARGS…"
    ),
    policy: str = typer.Option(None, "--policy", help="Policy file (JSON or YAML)."),
    grant: str = typer.Option("", "--grant", help="Grant label of this stdio client."),
    server: str = typer.Option("", "--server", help="Server name for server/tool rules."),
    upstream: str = typer.Option("", "--upstream", help="Streamable-HTTP server URL to front."),
    listen: str = typer.Option("", "--listen", help="Serve streamable HTTP on HOST:PORT (/mcp)."),
    tokens: str = typer.Option(None, "--tokens", help="Bearer tokens -> grants (YAML/JSON)."),
    allow_origin: list[str] = typer.Option(
        [], "--allow-origin", help="Extra allowed Origin (scheme://host[:port|:*]); repeatable."
    ),
    enforcer: str = typer.Option("", "--enforcer", help="Decide through the gRPC enforcer."),
    enforcer_token_file: str = typer.Option(
        "",
        "--enforcer-token-file",
        help="File holding the bearer token for an enforcer run with --tokens.",
    ),
    enforcer_timeout: float = typer.Option(
        DEFAULT_ENFORCER_TIMEOUT, "--enforcer-timeout", help="Enforcer deadline, seconds."
    ),
    fail_open: bool = typer.Option(
        False, "--fail-open", help="Let calls through when the enforcer is unavailable."
    ),
    call_timeout: float = typer.Option(
        DEFAULT_CALL_TIMEOUT, "--call-timeout", help="Seconds the upstream gets per request."
    ),
    max_message_bytes: int = typer.Option(
        DEFAULT_MAX_MESSAGE_BYTES, "--max-message-bytes", help="Largest client message."
    ),
    otlp_endpoint: str = typer.Option(
        "",
        "--otlp-endpoint",
        help="OTLP/gRPC endpoint for spans (else OTEL_EXPORTER_OTLP_ENDPOINT).",
    ),
    log_level: str = typer.Option("warning", "--log-level", help="debug, info, warning, error."),
) -> None:
    """Enforce a policy on every tools/call between an MCP client and an MCP server."""
    logging.basicConfig(
        stream=sys.stderr,
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    redact_logs()
    try:
        config = make_config(
            policy=policy,
            command=command or (),
            upstream=upstream,
            listen=listen,
            tokens=tokens,
            grant=grant,
            server=server,
            allow_origins=allow_origin,
            enforcer=enforcer,
            enforcer_token_file=enforcer_token_file,
            enforcer_timeout=enforcer_timeout,
            fail_open=fail_open,
            call_timeout=call_timeout,
            max_message_bytes=max_message_bytes,
            otlp_endpoint=otlp_endpoint,
        )
        compiled = load_policy_of(config)
        token_table = load_tokens_of(config)
    except ConfigError as e:
        for problem in e.problems:
            err.print(f"error: {problem}", markup=False)
        raise typer.Exit(2) from None
    except (PolicyInvalid, TokensInvalid) as e:
        err.print(str(e), markup=False)
        raise typer.Exit(2) from None
    recorder = make_recorder(config)
    gate = make_gate(config, compiled, recorder)
    # MCP clients stop their servers with SIGTERM after closing stdin: exit through the
    # finally below so the last spans are flushed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if config.listens:
            _serve_http(config, gate, token_table)
        else:
            from callward.enforcer.proxy.stdio import serve_stdio

            anyio.run(
                lambda: serve_stdio(
                    gate,
                    make_connector(config),
                    grant=config.grant,
                    call_timeout=config.call_timeout,
                    max_message_bytes=config.max_message_bytes,
                )
            )
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        if recorder is not None:
            recorder.shutdown()


def _serve_http(config: ProxyConfig, gate: Gate, token_table: TokenTable | None) -> None:
    from callward.enforcer.proxy.http import ProxyHTTP, bound_socket, uvicorn_server

    if token_table is None:
        logging.getLogger("callward.proxy").warning(
            "no --tokens: every HTTP caller gets grant %r", config.grant
        )
    app = ProxyHTTP(
        gate,
        make_connector(config),
        tokens=token_table,
        grant=config.grant,
        allowed_origins=config.allowed_origins,
        call_timeout=config.call_timeout,
        max_message_bytes=config.max_message_bytes,
    )
    sock = bound_socket(config.listen_host, config.listen_port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    err.print(f"callward proxy listening on http://{shown}:{port}/mcp", markup=False)
    uvicorn_server(app).run(sockets=[sock])


def register(app: typer.Typer) -> None:
    app.command(
        "proxy",
        context_settings={"allow_interspersed_args": False},
        help="MCP gateway: enforce the policy on every tools/call (stdio or streamable HTTP).",
    )(proxy)


__all__ = ["proxy", "register"]
