"""Which rows the store already holds, with memory bounded by time rather than history.

A copy is a row whose ``(trace_id, span_id, start_time)`` is already stored: a retried or
replayed span is the same span sent again. Two records that share ids but not a start
time are both kept, as the trail keeps what it was sent (and the dashboard can show the
reuse). Copies arrive two ways: OTLP retries and spool replays, which come within
seconds or minutes of the first copy, and late re-sends of old spans, which are rare.
:class:`DedupeIndex` answers both exactly:

- **Recent rows** (``start_time`` within ``horizon_s`` of the reference clock) are looked
  up in memory. The memory holds the key of every stored row whose start lies within the
  horizon, and nothing older: keys are dropped by start minute once the whole minute has
  fallen behind the horizon. The reference clock only moves forward (the wall clock, or
  the newest start seen if that is ahead of it by no more than ``horizon_s``), so a row the
  horizon still covers was never dropped. At start the keys of the horizon are read back
  from the files, so a restart does not forget what it wrote just before.
- **Older rows** are looked up in the Parquet files of their partition. Files never change
  once written, so the keys of each file are cached (as one Arrow array, about 52 bytes a
  row) under a byte budget, least recently used first out.

Memory is therefore about (rows per horizon) × 70 bytes plus the file cache budget, flat
under sustained load; the 30-minute soak in BENCHMARKS.md measures it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from callward.record import PARQUET_DIR, PARTITION_COLUMN, partition_dir, partition_files

DEDUPE_HORIZON_S = 600
"""How far back (seconds of start time) copies are recognised from memory: OTLP exporters
give up retrying within about a minute, and a spool replay follows a restart."""
FILE_CACHE_BYTES = 64 << 20
"""Budget for the cached keys of older files, read when a late copy arrives."""
_MINUTE_US = 60_000_000
_KEY_BYTES = 24  # 16-byte trace id + 8-byte span id


def row_keys(table: pa.Table) -> pa.Array:
    """The dedupe key of each row as text: ``trace_id``, ``span_id`` (48 hex digits), then
    ``start_time`` in decimal microseconds."""
    start = table.column("start_time").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    joined = pc.binary_join_element_wise(
        table.column("trace_id"), table.column("span_id"), start.cast(pa.string()), ""
    )
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


def raw_keys(table: pa.Table) -> list[bytes]:
    """The ids of each row as 24 raw bytes, compact for the in-memory index (the start time
    is added by :class:`DedupeIndex`). Ids are validated hex of fixed width, so the joined
    text converts in one call."""
    if table.num_rows == 0:
        return []
    joined = pc.binary_join_element_wise(table.column("trace_id"), table.column("span_id"), "")
    raw = bytes.fromhex("".join(joined.to_pylist()))
    return [raw[i : i + _KEY_BYTES] for i in range(0, len(raw), _KEY_BYTES)]


def start_micros(table: pa.Table) -> list[int]:
    """``start_time`` of each row in integer microseconds since the epoch (UTC)."""
    col = table.column("start_time").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return col.to_pylist()


def _packed(start_us: int) -> bytes:
    return start_us.to_bytes(8, "big", signed=True)


class DedupeIndex:
    """The stored keys of one store, for one writer (not thread-safe, like the writer)."""

    def __init__(
        self,
        root: Path,
        *,
        horizon_s: int = DEDUPE_HORIZON_S,
        clock: Callable[[], float] = time.time,
        file_cache_bytes: int = FILE_CACHE_BYTES,
    ):
        self.root = root
        self.horizon_us = int(horizon_s * 1_000_000)
        self._clock = clock
        self._ref_us = int(clock() * 1_000_000)
        # ids + start (8 bytes) of every stored row within the horizon; each is in one
        # minute's bucket, as a key is added only when it was not already held
        self._recent: set[bytes] = set()
        self._minutes: dict[int, list[bytes]] = {}  # start minute -> its keys
        self._files: OrderedDict[Path, pa.Array] = OrderedDict()
        self._file_bytes = 0
        self.file_cache_bytes = file_cache_bytes
        self.files_read = 0
        self._warm()

    # ------------------------------------------------------------------ reference clock

    @property
    def cutoff_us(self) -> int:
        """Rows starting at or after this (µs) are recent: looked up in memory."""
        return self._ref_us - self.horizon_us

    def _advance(self) -> None:
        self._ref_us = max(self._ref_us, int(self._clock() * 1_000_000))
        # Drop minutes that lie wholly before the horizon.
        last_gone = self.cutoff_us // _MINUTE_US  # minutes < this end before the cutoff
        for minute in [m for m in self._minutes if m < last_gone]:
            self._recent.difference_update(self._minutes.pop(minute))

    def _warm(self) -> None:
        """Read back the keys of the rows the horizon covers (after a restart)."""
        cutoff = self.cutoff_us
        table_dir = self.root / PARQUET_DIR
        if not table_dir.is_dir():
            return
        first_date = time.strftime("%Y-%m-%d", time.gmtime(cutoff // 1_000_000))
        for part in sorted(table_dir.glob(f"{PARTITION_COLUMN}=*")):
            date = part.name.partition("=")[2]
            files = partition_files(part) if date >= first_date else []
            if not files:
                continue
            dataset = ds.dataset([str(f) for f in files], format="parquet")
            since = pa.scalar(cutoff, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
            table = dataset.to_table(
                columns=["trace_id", "span_id", "start_time"],
                filter=ds.field("start_time") >= since,
            )
            self.add(raw_keys(table), start_micros(table))

    # ------------------------------------------------------------------ lookups

    def stored(self, date: str, keys: list[bytes], starts_us: list[int]) -> list[bool]:
        """For each row of one date partition (ids from :func:`raw_keys`), whether the same
        span is already stored."""
        self._advance()
        cutoff = self.cutoff_us
        recent = self._recent
        out = [False] * len(keys)
        late: dict[str, list[int]] = {}
        for i, (key, start) in enumerate(zip(keys, starts_us, strict=True)):
            if start >= cutoff:
                out[i] = key + _packed(start) in recent
            else:
                late.setdefault(key.hex() + str(start), []).append(i)
        if late:
            for text in self._on_disk(date, list(late)):
                for i in late[text]:
                    out[i] = True
        return out

    def add(self, keys: list[bytes], starts_us: list[int]) -> None:
        """Record rows now durable in the store (those within the horizon)."""
        cutoff = self.cutoff_us
        minutes = self._minutes
        recent = self._recent
        for key, start in zip(keys, starts_us, strict=True):
            if start < cutoff:
                continue
            minute = start // _MINUTE_US
            entry = key + _packed(start)
            recent.add(entry)
            bucket = minutes.get(minute)
            if bucket is None:
                minutes[minute] = [entry]
            else:
                bucket.append(entry)

    @property
    def known_keys(self) -> int:
        """Keys held in memory now (rows within the horizon)."""
        return len(self._recent)

    def _on_disk(self, date: str, keys: list[str]) -> set[str]:
        wanted = pa.array(keys, type=pa.string())
        found: set[str] = set()
        for path in partition_files(partition_dir(self.root, date)):
            file_keys = self._file_keys(path)
            hits = file_keys.filter(pc.is_in(file_keys, value_set=wanted))
            found.update(hits.to_pylist())
        return found

    def _file_keys(self, path: Path) -> pa.Array:
        cached = self._files.get(path)
        if cached is not None:
            self._files.move_to_end(path)
            return cached
        keys = row_keys(pq.read_table(path, columns=["trace_id", "span_id", "start_time"]))
        self.files_read += 1
        self._files[path] = keys
        self._file_bytes += keys.nbytes
        while self._file_bytes > self.file_cache_bytes and len(self._files) > 1:
            _, dropped = self._files.popitem(last=False)
            self._file_bytes -= dropped.nbytes
        return keys
