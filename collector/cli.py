"""``callward collector``: run the OTLP receiver that keeps the audit trail."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

from callward.collector.config import ENV_VARS, load_config
from callward.paths import keep_files_private
from callward.redact import redact_logs

if TYPE_CHECKING:
    from callward.collector.service import Collector

console = Console(stderr=True)


# Longer than 60 lines only because typer declares each option in the signature (the
# docstring below is the command's help text); the body loads the config and hands over
# to _serve_until_signalled.
def collector(
    data_dir: Path = typer.Option(
        None, "--data-dir", help=f"Store directory [env {ENV_VARS['data_dir']}]."
    ),
    listen: str = typer.Option(
        None,
        "--listen",
        help=f"HOST:PORT for OTLP/gRPC; port 0 picks a free one [default 127.0.0.1:4317, "
        f"env {ENV_VARS['listen']}].",
    ),
    forward: str = typer.Option(
        None,
        "--forward",
        help=f"Pass spans on to this OTLP/gRPC endpoint [env {ENV_VARS['forward']}].",
    ),
    flush_interval: float = typer.Option(
        None,
        "--flush-interval",
        help=f"Seconds between Parquet flushes [default 2, env {ENV_VARS['flush_interval_s']}].",
    ),
    idle_flush: float = typer.Option(
        None,
        "--idle-flush",
        help=f"Flush once Exports pause this many seconds; 0 turns it off [default 0.25, "
        f"env {ENV_VARS['idle_flush_s']}].",
    ),
    batch_size: int = typer.Option(
        None,
        "--batch-size",
        help=f"Spans that trigger a flush [default 20000, env {ENV_VARS['batch_size']}].",
    ),
    decode_workers: int = typer.Option(
        None,
        "--decode-workers",
        help=f"Decoding processes; 0 decodes in-process [default 2, env {ENV_VARS['decode_workers']}].",
    ),
    tokens: str = typer.Option(
        None,
        "--tokens",
        help="Bearer tokens file (YAML/JSON); set, an Export without a valid token is "
        f"UNAUTHENTICATED and nothing of it is stored [default off, env {ENV_VARS['tokens']}].",
    ),
    tls_cert: str = typer.Option(
        None,
        "--tls-cert",
        help=f"Serve OTLP over TLS with this certificate chain, PEM [env {ENV_VARS['tls_cert']}].",
    ),
    tls_key: str = typer.Option(
        None,
        "--tls-key",
        help=f"The certificate's private key, PEM [env {ENV_VARS['tls_key']}].",
    ),
    tls_client_ca: str = typer.Option(
        None,
        "--tls-client-ca",
        help="Require client certificates signed by this CA, PEM "
        f"[default off, env {ENV_VARS['tls_client_ca']}].",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level."),
) -> None:
    """Receive OTLP trace spans and keep every tool call in Parquet + DuckDB."""
    from callward.collector.lean import keep_pandas_out
    from callward.collector.service import Collector

    keep_pandas_out()  # this process is the collector's alone
    keep_files_private()

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    redact_logs()
    try:
        config = load_config(
            data_dir=data_dir,
            listen=listen,
            forward=forward,
            flush_interval_s=flush_interval,
            idle_flush_s=idle_flush,
            batch_size=batch_size,
            decode_workers=decode_workers,
            tokens=tokens,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
        )
        service = Collector(config)  # reads the tokens and TLS files
    except ValueError as e:  # AuthInvalid included
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from None

    _serve_until_signalled(service, config.listen)


def _serve_until_signalled(service: Collector, listen: str) -> None:
    """Start ``service``, print the bound port, and stop it cleanly on SIGTERM or SIGINT."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        port = service.start()
    except ValueError as e:  # a setting only the component behind it can judge (--forward)
        service.stop()
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from None
    except OSError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(1) from None
    host = listen.rpartition(":")[0]
    # One plain line on stdout that scripts (and tests) can read the bound port from.
    print(f"callward collector listening on {host}:{port}", flush=True)
    console.print(f"data in [bold]{service.data_dir}[/bold]; Ctrl-C or SIGTERM to stop")
    while not stop.wait(0.5):
        pass
    console.print("stopping: finishing in-flight exports and flushing to Parquet")
    service.stop()
    console.print(f"stopped; {service.writer.rows_written if service.writer else 0} row(s) written")
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command("collector")(collector)
