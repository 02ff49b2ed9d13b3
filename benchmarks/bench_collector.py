"""Collector ingest benchmark: OTLP batches of 512 spans over loopback gRPC into Parquet,
against a decode-only baseline measured on the same requests in the same run.

    python benchmarks/bench_collector.py [--requests 200] [--clients 4] [--decode-workers 2]

Figures:
- parse-only: protobuf parsing of the requests, nothing else (context for the floor);
- decode-only: parsing plus decoding to tool-call rows (redaction included), in process,
  with no network, spool or Parquet: the baseline the ingest rate is compared with;
- ingest: the real collector (``python -m callward.collector``, a separate process, fsync on),
  clients sending the same requests; timed from the first send until every row is in a
  Parquet file; p50/p99 Export latency as the clients saw it;
- CPU: spans per CPU second, for decode-only (one thread) and for the whole collector
  (main process and workers); on a shared machine this says more than wall-clock rates;
- memory: the collector's peak RSS (main process) and peak PSS of the main process plus
  its children (decode workers) during the sustained run (psutil); and the same from the
  collector's start, which includes the one-off creation of the new store's DuckDB view
  (a short-lived child process that loads DuckDB when the first Parquet file appears).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import psutil
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import track
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from callward.collector.decode import Decoder  # noqa: E402
from callward.collector.otlp_build import tool_call_batch  # noqa: E402
from callward.collector.otlp_parse import parse_request  # noqa: E402
from callward.collector.receiver import EXPORT_METHOD  # noqa: E402
from callward.collector.store import parquet_files  # noqa: E402

SPANS_PER_REQUEST = 512
console = Console()


def build_requests(n: int) -> list[bytes]:
    return [
        tool_call_batch(SPANS_PER_REQUEST, offset=i * SPANS_PER_REQUEST).SerializeToString()
        for i in track(range(n), description="building OTLP requests", console=console)
    ]


def parse_only(requests: list[bytes]) -> float:
    start = time.perf_counter()
    for data in requests:
        parse_request(data)
    return len(requests) * SPANS_PER_REQUEST / (time.perf_counter() - start)


def decode_only(requests: list[bytes]) -> tuple[float, float]:
    """Spans per wall-clock second and per CPU second, one thread."""
    decoder = Decoder()
    decoder.decode_bytes(requests[0], time.time_ns())  # warm caches, imports
    start, cpu = time.perf_counter(), time.process_time()
    for data in requests:
        decoder.decode_bytes(data, time.time_ns())
    spans = len(requests) * SPANS_PER_REQUEST
    return spans / (time.perf_counter() - start), spans / (time.process_time() - cpu)


def cpu_seconds(process: psutil.Process) -> tuple[float, float]:
    """CPU time used so far by ``process`` and by its live children (the decode workers)."""
    main = process.cpu_times()
    workers = 0.0
    for p in process.children(recursive=True):
        t = p.cpu_times()
        workers += t.user + t.system
    return main.user + main.system, workers


def stored_rows(data_dir: Path) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in parquet_files(data_dir))


class RssSampler(threading.Thread):
    """Peak memory of the collector: RSS of its main process, and PSS of it with its decode
    workers (proportional set size: shared library pages split between the processes)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak_main = 0
        self.peak_total = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                main = self.process.memory_full_info()
                # Workers share the libraries' pages with the main process: PSS counts
                # each shared page once across them, RSS would count it per process.
                workers = sum(
                    c.memory_full_info().pss for c in self.process.children(recursive=True)
                )
            except psutil.Error:
                return
            self.peak_main = max(self.peak_main, main.rss)
            self.peak_total = max(self.peak_total, main.pss + workers)
            time.sleep(0.05)


def ingest(requests: list[bytes], clients: int, decode_workers: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-collector-") as tmp:
        data_dir = Path(tmp)
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "callward.collector", "--data-dir", str(data_dir)),
                *("--listen", "127.0.0.1:0", "--decode-workers", str(decode_workers)),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            address = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
            whole = RssSampler(proc.pid)  # from start to end, the new store's setup included
            whole.start()
            collector_process = psutil.Process(proc.pid)
            latencies: list[float] = []
            lock = threading.Lock()
            channel = grpc.insecure_channel(
                address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
            )
            export = channel.unary_unary(EXPORT_METHOD)
            export(requests[0], timeout=60)  # connect and warm up; stored too
            # The store's first Parquet file switches the DuckDB view from "empty" to the
            # files, once per store, in a short-lived child process: let that happen
            # before the sustained run whose memory is measured.
            while stored_rows(data_dir) < SPANS_PER_REQUEST:
                time.sleep(0.02)
            time.sleep(1.0)
            sampler = RssSampler(proc.pid)
            sampler.start()
            expected = len(requests) * SPANS_PER_REQUEST

            def client(share: list[bytes]) -> None:
                for data in share:
                    t0 = time.perf_counter()
                    export(data, timeout=60)
                    dt = time.perf_counter() - t0
                    with lock:
                        latencies.append(dt)

            shares = [requests[i::clients] for i in range(clients)]
            threads = [threading.Thread(target=client, args=(s,)) for s in shares]
            start = time.perf_counter()
            cpu_before = cpu_seconds(collector_process)
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            acked = time.perf_counter() - start
            while stored_rows(data_dir) < expected:
                time.sleep(0.02)
            stored = time.perf_counter() - start
            cpu_after = cpu_seconds(collector_process)
            cpu_main = cpu_after[0] - cpu_before[0]
            cpu_workers = cpu_after[1] - cpu_before[1]
            sampler.done.set()
            sampler.join()
            whole.done.set()
            whole.join()
            channel.close()
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        latencies.sort()
        return {
            "rate": expected / stored,
            "ack_rate": expected / acked,
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
            "rss_main_mb": sampler.peak_main / 1e6,
            "rss_total_mb": sampler.peak_total / 1e6,
            "rss_setup_mb": whole.peak_total / 1e6,
            "seconds": stored,
            "per_cpu_s": expected / (cpu_main + cpu_workers),
            "main_us": cpu_main / expected * 1e6,
            "workers_us": cpu_workers / expected * 1e6,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests of 512 spans")
    parser.add_argument("--clients", type=int, default=4, help="concurrent exporting clients")
    parser.add_argument("--decode-workers", type=int, default=2, help="collector decode processes")
    args = parser.parse_args()
    requests = build_requests(args.requests)
    spans = args.requests * SPANS_PER_REQUEST
    console.print(f"{spans} spans in {args.requests} requests of {SPANS_PER_REQUEST}")
    parse_rate = parse_only(requests)
    decode_rate, decode_per_cpu = decode_only(requests)
    result = ingest(requests, args.clients, args.decode_workers)

    table = Table(title="collector ingest (same run, same requests)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("vs decode-only", justify="right")
    table.add_row(
        "parse-only (protobuf)", f"{parse_rate:,.0f} spans/s", f"{parse_rate / decode_rate:.2f}x"
    )
    table.add_row("decode-only baseline", f"{decode_rate:,.0f} spans/s", "1.00x")
    table.add_row(
        "ingest into Parquet",
        f"{result['rate']:,.0f} spans/s",
        f"{result['rate'] / decode_rate:.2f}x",
    )
    table.add_row(
        "acknowledged (spooled)",
        f"{result['ack_rate']:,.0f} spans/s",
        f"{result['ack_rate'] / decode_rate:.2f}x",
    )
    table.add_row("decode-only, per CPU second", f"{decode_per_cpu:,.0f} spans/CPU-s", "")
    table.add_row(
        "ingest, per collector CPU second",
        f"{result['per_cpu_s']:,.0f} spans/CPU-s",
        f"{result['per_cpu_s'] / decode_per_cpu:.2f}x",
    )
    table.add_row(
        "collector CPU per span: main / workers",
        f"{result['main_us']:.1f} / {result['workers_us']:.1f} us",
        "",
    )
    table.add_row("Export latency p50", f"{result['p50_ms']:.1f} ms", "")
    table.add_row("Export latency p99", f"{result['p99_ms']:.1f} ms", "")
    table.add_row("collector peak RSS, main process", f"{result['rss_main_mb']:.0f} MB", "")
    table.add_row("collector peak PSS, with workers", f"{result['rss_total_mb']:.0f} MB", "")
    table.add_row(
        "  same, new store's one-off view setup included",
        f"{result['rss_setup_mb']:.0f} MB",
        "",
    )
    table.add_row("run time", f"{result['seconds']:.1f} s", "")
    console.print(table)
    load = psutil.getloadavg()
    console.print(
        f"{psutil.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )


if __name__ == "__main__":
    main()
