"""Nothing acknowledged is lost: SIGKILL the real collector process again and again
while a client sends and retries, then prove every acknowledged span is stored exactly
once and every Parquet file is readable.

The kill loop starts ``python -m callward.collector`` (the same command as ``callward collector``
without importing the other components) with decoding in-process, so restarts are quick;
acknowledgement and recovery do not depend on where decoding runs. Other tests run the
``callward collector`` entry point itself, and SIGKILL a collector with decode workers."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import duckdb
import grpc
import pyarrow.parquet as pq
import pytest

from callward.collector.audit import verify_store
from callward.collector.otlp_build import SpanSpec, build_request, callward_attributes
from callward.collector.receiver import EXPORT_METHOD
from callward.collector.schema import DUCKDB_FILE
from callward.collector.store import parquet_files

REPO = Path(__file__).resolve().parents[2]
KILLS = 5
BATCH = 40


class CollectorProcess:
    """The real CLI in a subprocess; ``address`` is where it currently listens."""

    def __init__(
        self,
        data_dir: Path,
        entry: tuple[str, ...] = ("-m", "callward.collector"),
        decode_workers: int = 0,
    ):
        self.data_dir = data_dir
        self.entry = entry
        self.decode_workers = decode_workers
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable, *self.entry,
                "--data-dir", str(self.data_dir), "--listen", "127.0.0.1:0",
                "--flush-interval", "0.2", "--batch-size", "300",
                "--decode-workers", str(self.decode_workers),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "listening on" in line, f"collector did not start: {line!r}"
        self.address = line.strip().rsplit(" ", 1)[-1]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


class RetryingClient(threading.Thread):
    """Sends numbered batches; a batch counts as acknowledged only on an OK answer, and
    is retried (as OTLP exporters do) until it gets one. Some acknowledged batches are
    sent again, as happens when an ack is lost on the way back."""

    def __init__(self, collector: CollectorProcess, rng: random.Random):
        super().__init__(daemon=True)
        self.collector = collector
        self.rng = rng
        self.stop_sending = threading.Event()
        self.acked: set[tuple[str, str]] = set()
        self.resent = 0
        self.errors = 0
        self.failure: BaseException | None = None

    def _batch(self, n: int) -> tuple[bytes, list[tuple[str, str]]]:
        specs = [SpanSpec(attributes=callward_attributes(n * BATCH + i)) for i in range(BATCH)]
        keys = [(s.trace_id.hex(), s.span_id.hex()) for s in specs]
        return build_request(specs).SerializeToString(), keys

    def _send_until_acked(self, data: bytes) -> None:
        while True:
            address = self.collector.address
            try:
                with grpc.insecure_channel(address) as channel:
                    call = channel.unary_unary(EXPORT_METHOD)
                    call(data, timeout=5)
                return
            except grpc.RpcError:
                self.errors += 1
                time.sleep(0.02)

    def run(self) -> None:
        try:
            sent: list[bytes] = []
            n = 0
            while not self.stop_sending.is_set():
                data, keys = self._batch(n)
                self._send_until_acked(data)
                self.acked.update(keys)
                sent.append(data)
                n += 1
                if self.rng.random() < 0.2:
                    self._send_until_acked(self.rng.choice(sent))
                    self.resent += 1
        except BaseException as e:  # surfaced by the test
            self.failure = e


@pytest.mark.timeout(240)
def test_sigkill_loses_no_acknowledged_span_and_duplicates_none(tmp_path: Path) -> None:
    rng = random.Random(1234)
    collector = CollectorProcess(tmp_path / "data")
    collector.start()
    client = RetryingClient(collector, rng)
    client.start()
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.3, 1.5))
            collector.kill()
            collector.start()
        time.sleep(0.5)
    finally:
        client.stop_sending.set()
        client.join(timeout=60)
    assert client.failure is None, client.failure
    assert not client.is_alive()
    assert collector.terminate() == 0  # a clean stop flushes what is left

    assert len(client.acked) >= BATCH * 5, "the client hardly got anything through"
    assert client.errors > 0, "no request ever failed: the kills did not hit the client"
    for path in parquet_files(tmp_path / "data"):
        pq.read_table(path)  # every visible file is whole
    con = duckdb.connect(str(tmp_path / "data" / DUCKDB_FILE), read_only=True)
    rows = con.execute("select trace_id, span_id from tool_calls").fetchall()
    con.close()
    counts = Counter(rows)
    assert max(counts.values()) == 1, "a span was stored twice"
    missing = client.acked - set(counts)
    assert not missing, f"{len(missing)} acknowledged span(s) lost"
    assert list((tmp_path / "data" / "spool").glob("seg-*.log")) == []
    # Kills between a file's rename and the head update are not tampering: the chain
    # holds across every restart.
    audit = verify_store(tmp_path / "data")
    assert audit.ok, audit.to_json()
    assert sum(p.rows for p in audit.partitions) == len(rows)


@pytest.mark.timeout(120)
def test_callward_collector_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    collector = CollectorProcess(
        tmp_path / "data", entry=("-m", "callward", "collector"), decode_workers=0
    )
    collector.start()
    specs = [SpanSpec(attributes=callward_attributes(i)) for i in range(25)]
    with grpc.insecure_channel(collector.address) as channel:
        channel.unary_unary(EXPORT_METHOD)(build_request(specs).SerializeToString(), timeout=30)
    assert collector.terminate() == 0
    con = duckdb.connect(str(tmp_path / "data" / DUCKDB_FILE), read_only=True)
    assert con.execute("select count(*) from tool_calls").fetchone() == (25,)
    con.close()
    assert list((tmp_path / "data" / "spool").glob("seg-*.log")) == []


@pytest.mark.timeout(120)
def test_sigkill_leaves_no_orphaned_decode_worker(tmp_path: Path) -> None:
    import psutil

    collector = CollectorProcess(tmp_path / "data", decode_workers=2)
    collector.start()
    assert collector.proc is not None
    children = psutil.Process(collector.proc.pid).children(recursive=True)
    assert len(children) >= 2
    collector.kill()
    _, alive = psutil.wait_procs(children, timeout=30)
    assert alive == [], f"orphaned worker(s): {[p.pid for p in alive]}"
