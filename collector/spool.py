"""The write-ahead spool: what the collector has acknowledged but not yet put in Parquet.

The spool is a :class:`~callward.collector.segment_log.SegmentLog` with an fsync per
append (unless the config turns it off for tests and benchmarks): :meth:`Spool.append`
returns only after the frame is on disk, so a caller that acknowledges afterwards never
acknowledges anything a crash can take back. The writer seals the current segment
(:meth:`Spool.rotate`), turns the sealed frames into Parquet, and only then deletes the
sealed segments (:meth:`Spool.discard_through`). At start, :meth:`Spool.recover` yields
every intact frame a previous run left (torn tails cut off; see the segment log).

Payloads are Arrow IPC streams of tool-call rows (:func:`encode_rows`); the log itself
does not care what they hold.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from callward.collector.segment_log import (
    HEADER_SIZE,
    MAGIC,
    MAX_FRAME_PAYLOAD,
    SegmentLog,
    frame,
)

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "MAX_RECORD_BYTES",
    "Spool",
    "decode_rows",
    "encode_rows",
    "frame",
]

MAX_RECORD_BYTES = MAX_FRAME_PAYLOAD


def encode_rows(table: pa.Table) -> bytes:
    """Rows as an Arrow IPC stream (fast to write, exact types back)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_rows(payload: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(payload)).read_all()


class Spool(SegmentLog):
    """The collector's write-ahead log: a segment log fsync'ed at every append."""

    def __init__(self, directory: Path, *, fsync: bool = True):
        super().__init__(directory, sync_each_append=fsync)
