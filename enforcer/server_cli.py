"""``callward enforcer``: serve a policy over gRPC until SIGINT/SIGTERM; SIGHUP reloads it."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType

import typer
from rich.console import Console

from callward.enforcer.errors import PolicyInvalid
from callward.enforcer.policy import load_policy
from callward.enforcer.reload import PolicyReloader
from callward.enforcer.server import EnforcerServer, EnforcerService, ListenFailed
from callward.enforcer.server_config import ENV_OF, make_server_config
from callward.enforcer.telemetry import CallRecorder
from callward.grpc_auth import AuthInvalid, load_server_auth
from callward.redact import redact_logs

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
log = logging.getLogger("callward.enforcer")


def telemetry_wanted(otlp: bool | None, otlp_endpoint: str | None) -> bool:
    """Explicit flag, else on when an OTLP endpoint is configured (flag or environment)."""
    if otlp is not None:
        return otlp
    return bool(otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def _recorder(endpoint: str | None) -> CallRecorder:
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return CallRecorder(exporter=OTLPSpanExporter(endpoint=endpoint))
    return CallRecorder()


def enforcer(
    policy: Path = typer.Option(..., "--policy", help="Policy file (JSON or YAML)."),
    listen: str | None = typer.Option(
        None,
        "--listen",
        help=f"HOST:PORT; port 0 picks one (default: ${ENV_OF['listen']}, else 127.0.0.1:50051).",
    ),
    otlp: bool | None = typer.Option(
        None,
        "--otlp/--no-otlp",
        help="Export one span per call over OTLP "
        "(default: on when OTEL_EXPORTER_OTLP_ENDPOINT or --otlp-endpoint is set).",
    ),
    otlp_endpoint: str | None = typer.Option(
        None, "--otlp-endpoint", help="OTLP/gRPC endpoint, e.g. http://127.0.0.1:4317."
    ),
    reload_interval: float = typer.Option(
        1.0, "--reload-interval", help="Seconds between policy file checks; 0: SIGHUP only."
    ),
    pending_ttl: float | None = typer.Option(
        None,
        "--pending-ttl",
        help="Seconds an allowed call waits for its Report "
        f"(default: ${ENV_OF['pending_ttl_s']}, else 600).",
    ),
    workers: int | None = typer.Option(
        None, "--workers", help=f"gRPC worker threads (default: ${ENV_OF['max_workers']}, else 8)."
    ),
    tokens: str | None = typer.Option(
        None,
        "--tokens",
        help="Bearer tokens -> grants (YAML/JSON); set, a call without a valid token is "
        f"UNAUTHENTICATED and the token's grant is the call's (default: ${ENV_OF['tokens']}, "
        "else off).",
    ),
    tls_cert: str | None = typer.Option(
        None,
        "--tls-cert",
        help=f"Serve TLS with this certificate chain, PEM (default: ${ENV_OF['tls_cert']}).",
    ),
    tls_key: str | None = typer.Option(
        None,
        "--tls-key",
        help=f"The certificate's private key, PEM (default: ${ENV_OF['tls_key']}).",
    ),
    tls_client_ca: str | None = typer.Option(
        None,
        "--tls-client-ca",
        help="Require client certificates signed by this CA, PEM; the certificate's CN is "
        f"the call's grant (default: ${ENV_OF['tls_client_ca']}, else off).",
    ),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning, error."),
) -> None:
    """Serve Check/Report over gRPC (with health and reflection) for one policy file."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    redact_logs()
    try:
        compiled = load_policy(policy)
    except PolicyInvalid as e:
        err.print(e.report(), markup=False)
        err.print(f"callward enforcer: {policy} is not a valid policy; not starting", markup=False)
        raise typer.Exit(2) from None
    try:
        config = make_server_config(
            listen=listen,
            max_workers=workers,
            pending_ttl_s=pending_ttl,
            tokens=tokens,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
        )
        auth = load_server_auth(
            config.tokens, config.tls_cert, config.tls_key, config.tls_client_ca
        )
    except AuthInvalid as e:
        for problem in e.problems:
            err.print(f"callward enforcer: {problem}", markup=False)
        raise typer.Exit(2) from None
    except ValueError as e:
        err.print(f"callward enforcer: {e}", markup=False)
        raise typer.Exit(2) from None

    recorder = _recorder(otlp_endpoint) if telemetry_wanted(otlp, otlp_endpoint) else None
    service = EnforcerService(compiled, config=config, recorder=recorder)
    server = EnforcerServer(service, auth)
    try:
        server.start()
    except ListenFailed as e:
        err.print(f"callward enforcer: {e}", markup=False)
        if recorder is not None:
            recorder.shutdown()
        raise typer.Exit(1) from None
    reloader = PolicyReloader(
        policy,
        service.swap_policy,
        lambda: service.policy.version,
        interval_s=reload_interval,
    )
    reloader.start()
    done = _stop_on_signals(reloader)  # before the line a supervisor waits for
    out.print(
        f"callward enforcer listening on {server.address} "
        f"policy {compiled.version} ({len(compiled.tools)} tool rule(s)) from {policy}; "
        f"telemetry {'on' if recorder is not None else 'off'}; "
        f"authentication {'on' if auth.enabled else 'off'}",
        markup=False,
    )
    out.file.flush()
    while not done.wait(0.5):
        pass
    reloader.stop()
    server.stop()
    if recorder is not None:
        recorder.shutdown()  # flushes spans still queued
    out.print("callward enforcer stopped", markup=False)


def _stop_on_signals(reloader: PolicyReloader) -> threading.Event:
    """An event set on SIGINT or SIGTERM; SIGHUP asks ``reloader`` for a reload."""
    done = threading.Event()

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        done.set()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        reloader.request_reload()

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_hup)
    return done


def register(app: typer.Typer) -> None:
    app.command("enforcer")(enforcer)


__all__ = ["enforcer", "register", "telemetry_wanted"]
