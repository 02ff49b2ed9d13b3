"""What the hash chain costs the write path, and how fast ``audit verify`` is.

    python benchmarks/bench_audit.py [--repeats 5]

The rows are the committed sample store's (20,000 generated calls with their real argument
and attribute texts). For each batch size they are written into a fresh store through
:class:`StoreWriter` twice per repeat, alternating: with the chain (as shipped) and with
the chain's two steps replaced by pass-throughs (no ``row_hash``, no link, no head record),
everything else equal (conform, dedupe, Parquet, fsync); and a third time with the chain
but no head record, which splits the cost. The figure is the ratio of the medians. Also: the chain's own steps per row (canonical bytes, the SHA-256 loop) and
``verify_store`` over the sample.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from callward.collector.audit import verify_store  # noqa: E402
from callward.collector.chain import (  # noqa: E402
    ChainWriter,
    FileLink,
    _Tip,
    canonical_rows,
    chain,
    genesis,
)
from callward.collector.store import StoreWriter, conform  # noqa: E402
from callward.datasets.sample_store import SAMPLE_DIR  # noqa: E402
from callward.record import PARQUET_DIR, RECORD_COLUMNS  # noqa: E402

BATCHES = (512, 5_000, 20_000)
console = Console()


class _ChainWithoutHeads(ChainWriter):
    """The chain without its head record: splits the cost into hashing and the record's
    two extra fsyncs per file."""

    def advance(self, link: FileLink, file_name: str) -> None:
        self._tips[link.date] = _Tip(link.seq, bytes.fromhex(link.last))


class _NoChain:
    """The chain's steps as pass-throughs: the baseline of the same writer."""

    def seal(self, date: str, table: pa.Table) -> tuple[pa.Table, FileLink]:
        return table, FileLink(1, date, 0, "0" * 64, "0" * 64, table.num_rows)

    def advance(self, link: FileLink, file_name: str) -> None:
        pass


def sample_rows() -> pa.Table:
    table = ds.dataset(SAMPLE_DIR / PARQUET_DIR, format="parquet", partitioning="hive")
    rows = table.to_table(columns=list(RECORD_COLUMNS)).sort_by("start_time")
    return conform(rows)


def write_all(rows: pa.Table, batch: int, mode: str) -> tuple[float, float]:
    """Wall-clock and CPU seconds of writing ``rows`` ``batch`` at a time."""
    with tempfile.TemporaryDirectory() as tmp:
        writer = StoreWriter(Path(tmp))
        if mode == "none":
            writer.chains = _NoChain()  # type: ignore[assignment]
        elif mode == "no heads":
            writer.chains = _ChainWithoutHeads(writer.root)
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(0, rows.num_rows, batch):
            writer.write(rows.slice(i, batch))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        writer.close()
    return elapsed, cpu


def steps(rows: pa.Table) -> tuple[float, float]:
    """Seconds per row of the canonical bytes and of the SHA-256 loop."""
    start = time.perf_counter()
    canonical = canonical_rows(rows)
    mid = time.perf_counter()
    chain(genesis("2026-01-05"), canonical)
    end = time.perf_counter()
    return (mid - start) / rows.num_rows, (end - mid) / rows.num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = sample_rows()
    console.print(f"{rows.num_rows} rows from {SAMPLE_DIR.name}; {args.repeats} repeats")

    walls = Table(title="write path, wall clock: StoreWriter.write with and without the chain")
    cpus = Table(title="write path, CPU seconds of the writing process")
    columns = ("rows per write", "without chain", "chain, no head record", "with chain")
    for t in (walls, cpus):
        for col in (*columns, "ratio", "µs per row added"):
            t.add_column(col, justify="right")
    for batch in BATCHES:
        runs: dict[str, list[tuple[float, float]]] = {"none": [], "no heads": [], "chain": []}
        for _ in range(args.repeats):
            for mode, times in runs.items():  # alternating, so drift hits all three
                times.append(write_all(rows, batch, mode))
        for k, t in enumerate((walls, cpus)):
            a, h, b = (statistics.median(x[k] for x in runs[m]) for m in runs)
            t.add_row(
                f"{batch:,}",
                f"{a * 1000:.0f} ms",
                f"{h * 1000:.0f} ms ({h / a:.2f})",
                f"{b * 1000:.0f} ms",
                f"{b / a:.2f}",
                f"{(b - a) / rows.num_rows * 1e6:.1f}",
            )
    console.print(walls)
    console.print(cpus)

    canonical_s, loop_s = zip(*(steps(rows) for _ in range(args.repeats)), strict=True)
    console.print(
        f"chain steps per row: canonical bytes {statistics.median(canonical_s) * 1e6:.2f} µs, "
        f"SHA-256 loop {statistics.median(loop_s) * 1e6:.2f} µs"
    )
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        report = verify_store(SAMPLE_DIR)
        times.append(time.perf_counter() - start)
        assert report.ok
    t = statistics.median(times)
    console.print(
        f"audit verify over the sample: {t * 1000:.0f} ms median "
        f"({rows.num_rows / t:,.0f} rows/s, {len(report.partitions)} partitions)"
    )


if __name__ == "__main__":
    main()
