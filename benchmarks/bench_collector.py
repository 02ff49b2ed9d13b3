"""Collector ingest benchmark: OTLP batches of 512 spans over loopback gRPC into Parquet,
against a decode-only baseline measured on the same requests in the same run.

    python benchmarks/bench_collector.py [--requests 200] [--clients 4] [--decode-workers 2]
                                         [--sustain-seconds 60]

Figures:
- parse-only: protobuf parsing of the requests, nothing else (context for the floor);
- decode-only: parsing plus decoding to tool-call rows (redaction included), in process,
  with no network, spool or Parquet: the baseline the ingest rate is compared with;
- ingest: the real collector (``python -m callward.collector``, a separate process, fsync on),
  clients sending the same requests; timed from the first send until every row is in a
  Parquet file; p50/p99 Export latency as the clients saw it;
- CPU: spans per CPU second, for decode-only (one thread) and for the whole collector
  (main process and workers); on a shared machine this says more than wall-clock rates;
- memory during a sustained run: after the timed requests the clients keep exporting
  fresh spans (new span ids, call ids and arguments, so that nothing is deduplicated and
  the decoder's caches see new values as in real traffic) for ``--sustain-seconds``
  (default 60); the collector's RSS (main process) and PSS of the main process plus its
  children (decode workers) are sampled every half second over the whole load, timed
  requests and sustained phase together (psutil), and their maximum and median printed;
  the verdict (< 300 MB) is on the maximum. The maximum from the collector's start is
  printed too: it includes the one-off creation of the new store's DuckDB view (a
  short-lived child process that loads DuckDB when the first Parquet file appears).
"""

from __future__ import annotations

import argparse
import itertools
import json
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
from callward.collector.otlp_build import (  # noqa: E402
    SpanSpec,
    build_request,
    callward_attributes,
    tool_call_batch,
)
from callward.collector.otlp_parse import parse_request  # noqa: E402
from callward.collector.receiver import EXPORT_METHOD  # noqa: E402
from callward.collector.store import parquet_files  # noqa: E402
from callward.semconv import GEN_AI_TOOL_CALL_ARGUMENTS, GEN_AI_TOOL_CALL_ID  # noqa: E402

SPANS_PER_REQUEST = 512
SAMPLE_INTERVAL_S = 0.5
MIN_SUSTAIN_S = 60.0  # the memory target is about a sustained run: a minute at least
MEMORY_TARGET_MB = 300
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
    """Memory of the collector over time: RSS of its main process, and PSS of it with its
    decode workers (proportional set size: shared library pages split between the
    processes), one sample every ``SAMPLE_INTERVAL_S``."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.main_rss: list[int] = []
        self.total_pss: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while True:
            try:
                main = self.process.memory_full_info()
                # Workers share the libraries' pages with the main process: PSS counts
                # each shared page once across them, RSS would count it per process.
                workers = sum(
                    c.memory_full_info().pss for c in self.process.children(recursive=True)
                )
            except psutil.Error:
                return
            self.main_rss.append(main.rss)
            self.total_pss.append(main.pss + workers)
            if self.done.wait(SAMPLE_INTERVAL_S):
                return


class FreshSpans:
    """Requests with new span ids, call ids, arguments and start times, made from one
    request built with placeholders.

    Building a request span by span costs about a tenth of a second under load, more
    than the collector takes to store it; every value that makes a span unique is a
    placeholder of fixed width in the serialized template, so a fresh request is a join
    and two replaces of bytes (no protobuf lengths change), and the clients keep the
    collector busy without the load generator taking the CPU.
    """

    ID = bytes.fromhex("a55ac33c5aa53cc3")  # span_id placeholder
    NUMBER = b"#" * 12  # call id and arguments placeholder, replaced by 12 digits
    START = 0x5A5AC3C3A5A53C3C  # start and end time placeholders (fixed64)
    END = START + 1_000_000

    def __init__(self, first: int) -> None:
        number = self.NUMBER.decode()
        spans = [
            SpanSpec(
                attributes=callward_attributes(
                    0,
                    **{
                        GEN_AI_TOOL_CALL_ID: f"sustained-call-{number}",
                        GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps(
                            {"path": f"/srv/data/sustained-{number}.txt"}
                        ),
                    },
                ),
                span_id=self.ID,
                start_ns=self.START,
                end_ns=self.END,
            )
            for _ in range(SPANS_PER_REQUEST)
        ]
        template = build_request(spans).SerializeToString()
        self.parts = template.split(self.ID)
        self.start = self.START.to_bytes(8, "little")
        self.end = self.END.to_bytes(8, "little")
        # Each placeholder must occur exactly where it was put, or the copies would lie.
        assert len(self.parts) == SPANS_PER_REQUEST + 1
        assert template.count(self.NUMBER) == 2 * SPANS_PER_REQUEST
        assert template.count(self.start) == template.count(self.end) == SPANS_PER_REQUEST
        self.numbers = itertools.count(first * SPANS_PER_REQUEST)
        self.lock = threading.Lock()

    def next(self) -> bytes:
        with self.lock:
            numbers = [next(self.numbers) for _ in range(SPANS_PER_REQUEST)]
        out = [self.parts[0]]
        for n, part in zip(numbers, self.parts[1:], strict=True):
            # A span's attributes follow its span_id, so part n+1 holds span n's texts.
            out.append(n.to_bytes(8, "big"))
            out.append(part.replace(self.NUMBER, b"%012d" % n))
        now = time.time_ns()
        data = b"".join(out)
        return data.replace(self.start, now.to_bytes(8, "little")).replace(
            self.end, (now + 1_000_000).to_bytes(8, "little")
        )


def memory_figures(name: str, samples: list[int]) -> dict[str, float]:
    """Max, median, first and last of a series of byte counts, in MB."""
    return {
        f"{name}_max_mb": max(samples) / 1e6,
        f"{name}_median_mb": statistics.median(samples) / 1e6,
        f"{name}_first_mb": samples[0] / 1e6,
        f"{name}_last_mb": samples[-1] / 1e6,
    }


def ingest(
    requests: list[bytes], clients: int, decode_workers: int, sustain_s: float
) -> dict[str, float]:
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

            # Sustained phase: the same clients keep exporting fresh spans.
            fresh = FreshSpans(first=len(requests) + 1)
            sent = [0] * clients
            deadline = time.perf_counter() + sustain_s

            def sustained(k: int) -> None:
                while time.perf_counter() < deadline:
                    export(fresh.next(), timeout=60)
                    sent[k] += 1

            threads = [threading.Thread(target=sustained, args=(k,)) for k in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            while stored_rows(data_dir) < expected + sum(sent) * SPANS_PER_REQUEST:
                time.sleep(0.02)
            loaded = time.perf_counter() - start
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
            "load_s": loaded,
            "sustained_spans": sum(sent) * SPANS_PER_REQUEST,
            "samples": len(sampler.main_rss),
            **memory_figures("rss_main", sampler.main_rss),
            **memory_figures("pss_total", sampler.total_pss),
            "pss_setup_max_mb": max(whole.total_pss) / 1e6,
            "rate": expected / stored,
            "ack_rate": expected / acked,
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
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
    parser.add_argument(
        "--sustain-seconds",
        type=float,
        default=MIN_SUSTAIN_S,
        help=f"seconds of sustained export after the timed requests (memory; at least "
        f"{MIN_SUSTAIN_S:g} for the verdict)",
    )
    args = parser.parse_args()
    load = psutil.getloadavg()
    console.print(
        f"{psutil.cpu_count()} CPUs, load average at the start "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )
    requests = build_requests(args.requests)
    spans = args.requests * SPANS_PER_REQUEST
    console.print(f"{spans} spans in {args.requests} requests of {SPANS_PER_REQUEST}")
    parse_rate = parse_only(requests)
    decode_rate, decode_per_cpu = decode_only(requests)
    result = ingest(requests, args.clients, args.decode_workers, args.sustain_seconds)

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
    table.add_row("timed run", f"{result['seconds']:.1f} s", "")
    console.print(table)

    sustained_s = result["load_s"] - result["seconds"]
    memory = Table(
        title=f"collector memory over {result['load_s']:.0f} s of load (timed requests, then "
        f"{sustained_s:.0f} s sustained: {result['sustained_spans']:,} more spans), "
        f"{result['samples']} samples"
    )
    for col in ("measure", "max", "median", "first sample", "last sample"):
        memory.add_column(col, justify="left" if col == "measure" else "right")
    for label, name in (("RSS, main process", "rss_main"), ("PSS, main + workers", "pss_total")):
        memory.add_row(
            label,
            *(f"{result[f'{name}_{k}_mb']:.0f} MB" for k in ("max", "median", "first", "last")),
        )
    memory.add_row(
        "  PSS from the collector's start (view setup included)",
        f"{result['pss_setup_max_mb']:.0f} MB",
        "",
        "",
        "",
    )
    console.print(memory)
    worst = max(result["rss_main_max_mb"], result["pss_total_max_mb"])
    if sustained_s < MIN_SUSTAIN_S:
        verdict = f"not judged: under {MIN_SUSTAIN_S:g} s of sustained load"
    else:
        verdict = "met" if worst < MEMORY_TARGET_MB else "MISSED"
    console.print(
        f"memory target < {MEMORY_TARGET_MB} MB during a sustained run (max of the two): "
        f"{worst:.0f} MB, {verdict}"
    )
    load = psutil.getloadavg()
    console.print(
        f"{psutil.cpu_count()} CPUs, load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )


if __name__ == "__main__":
    main()
