"""Where the collector's memory goes under steady traffic: the Python heap, traced.

    .venv/bin/python benchmarks/collector_heap.py [--minutes 6] [--rate 200] [--horizon 30]

Runs a collector in this process (decoding in-process, so every Python allocation is
traced) and sends it ``--rate`` fresh tool-call spans per second over OTLP/gRPC on
loopback. The dedupe horizon is cut to ``--horizon`` seconds so that its index is full
after the first minute. Every minute it prints the traced Python heap and the process
RSS; at the end, the allocation sites whose size changed most between the second minute
and the last. A flat traced heap beside a rising RSS puts the growth in native code.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import psutil  # noqa: E402
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc  # noqa: E402

from callward.collector.config import load_config  # noqa: E402
from callward.collector.otlp_build import tool_call_batch  # noqa: E402
from callward.collector.service import Collector  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=int, default=6)
    ap.add_argument("--rate", type=int, default=200, help="spans per second")
    ap.add_argument("--horizon", type=int, default=30, help="dedupe horizon, seconds")
    opts = ap.parse_args()
    tracemalloc.start(6)
    with tempfile.TemporaryDirectory(prefix="callward-heap-") as tmp:
        config = load_config(
            data_dir=Path(tmp), listen="127.0.0.1:0", decode_workers=0, flush_interval_s=1.0
        )
        collector = Collector(config)
        port = collector.start()
        if collector.writer is not None:  # a shorter horizon: the index is full sooner
            collector.writer.dedupe.horizon_us = opts.horizon * 1_000_000
        stub = trace_service_pb2_grpc.TraceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        stop = threading.Event()
        batch = max(1, opts.rate // 10)

        def send() -> None:
            sent = 0
            while not stop.is_set():
                stub.Export(tool_call_batch(batch, offset=sent))
                sent += batch
                time.sleep(0.1)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        me = psutil.Process()
        snapshots = []
        for minute in range(1, opts.minutes + 1):
            time.sleep(60)
            gc.collect()
            snapshots.append(tracemalloc.take_snapshot())
            heap = tracemalloc.get_traced_memory()[0] / 2**20
            rss = me.memory_info().rss / 2**20
            print(f"minute {minute}: traced heap {heap:.1f} MiB, RSS {rss:.1f} MiB", flush=True)
        stop.set()
        sender.join()
        collector.stop()
    if len(snapshots) >= 3:
        print("largest changes, minute 2 to the end:")
        for stat in snapshots[-1].compare_to(snapshots[1], "lineno")[:8]:
            print(f"  {stat.size_diff / 1024:+.0f} KiB  {stat.traceback.format()[-1].strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
