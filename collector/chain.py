"""The hash chain over the store: each row's ``row_hash`` links it to the row before it.

One chain per date partition, in write order (docs/audit.md explains the choice):

- ``row_hash`` of a row is SHA-256(hash of the previous row ‖ canonical bytes of the row's
  :data:`~callward.record.RECORD_COLUMNS`). The first row of a partition chains from the
  partition's *genesis*, a hash of the chain version, the date and any files the
  partition held before the chain began (their names and SHA-256), so a file moved in from
  another date or another store does not fit.
- Each Parquet file records its :class:`FileLink` in its key-value metadata
  (:data:`LINK_KEY`): its sequence number in the partition, the hash it chains from, its
  last hash and its row count. Files are ordered by sequence number, not by name.
- ``D/audit/heads.json`` holds the last link of every partition, rewritten atomically
  after each file is durable, so a deleted last file is seen. The files are the truth:
  a crash between a file's rename and the head update leaves the record one file behind,
  and the writer continues from the file.

The canonical bytes of a row are rebuilt from the Parquet file alone: each column in
schema order as a marker byte (``0x00`` null, ``0x01`` a value), a 4-byte big-endian
length (0 for null) and the value (UTF-8 text; int64 and timestamps as 8-byte big-endian
integers, timestamps in microseconds; float64 as 8-byte big-endian IEEE 754). They are built for a whole table
with Arrow kernels; only the chaining itself (one SHA-256 per row) is a Python loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from callward.collector.durable import atomic_write_bytes
from callward.record import (
    RECORD_COLUMNS,
    ROW_HASH,
    TOOL_CALL_SCHEMA,
    heads_path,
    partition_dir,
    partition_files,
)

log = logging.getLogger("callward.collector.chain")

CHAIN_VERSION = 1
LINK_KEY = b"callward.chain"
"""The Parquet key-value metadata key of a file's :class:`FileLink` (JSON)."""
_GENESIS_TAG = b"callward tool_calls chain\x00"
_READ_BYTES = 1 << 20


class ChainFormatError(ValueError):
    """A link or head record that is not in the form the writer writes."""


# ---------------------------------------------------------------------------- hashing


def _fixed_width(values: np.ndarray, width: int) -> pa.Array:
    """``values`` (one ``width``-byte item each, or a 2-D uint8 array) as a binary array,
    built from buffers (an Arrow cast costs more per call than a small batch's hashing)."""
    n = len(values)
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    data = pa.py_buffer(np.ascontiguousarray(values).tobytes())
    return pa.BinaryArray.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), data])


def _numbers(column: pa.Array, kind: pa.DataType) -> np.ndarray:
    """An int64, timestamp or float64 column as big-endian 8-byte items (nulls as 0)."""
    if pa.types.is_timestamp(kind):  # microseconds, as the schema (and verify) requires
        column = column.view(pa.int64())
    elif not (pa.types.is_int64(kind) or pa.types.is_float64(kind)):
        raise TypeError(f"no canonical encoding for {kind}")  # a new type needs one here
    if column.null_count:
        column = column.fill_null(pa.scalar(0, column.type))
    values = column.to_numpy(zero_copy_only=False)
    return values.astype(">f8" if pa.types.is_float64(kind) else ">i8")


def _encoded(column: pa.Array, kind: pa.DataType) -> tuple[pa.Array, pa.Array]:
    """The canonical bytes of each value of ``column`` (typed as in the schema): its
    5-byte head (marker and length) and its payload (null where the value is null)."""
    n = len(column)
    if pa.types.is_string(kind):
        payload = column.view(pa.binary())
        offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)[column.offset :]
        lengths = np.diff(offsets[: n + 1])
    else:
        payload = _fixed_width(_numbers(column, kind), 8)
        lengths = np.full(n, 8, dtype=np.int32)
    valid: np.ndarray | bool = True
    if column.null_count:
        valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
        lengths = np.where(valid, lengths, 0)
        if not pa.types.is_string(kind):
            payload = pc.if_else(valid, payload, pa.scalar(None, pa.binary()))
    head = np.empty((n, 5), dtype=np.uint8)
    head[:, 0] = valid
    head[:, 1:] = lengths.astype(">u4").view(np.uint8).reshape(-1, 4)
    return _fixed_width(head, 5), payload


def canonical_rows(table: pa.Table) -> list[bytes]:
    """The canonical bytes of each row of ``table`` (columns :data:`RECORD_COLUMNS`)."""
    if table.num_rows == 0:
        return []
    pieces: list[pa.Array] = []
    for name in RECORD_COLUMNS:
        chunks = table.column(name)
        # one chunk is read in place (a slice of it starts at an offset); more are joined
        column = chunks.chunk(0) if chunks.num_chunks == 1 else chunks.combine_chunks()
        pieces.extend(_encoded(column, TOOL_CALL_SCHEMA.field(name).type))
    # one join for the whole row; a null payload (a null value) adds no bytes
    rows = pc.binary_join_element_wise(
        *pieces, pa.scalar(b""), null_handling="replace", null_replacement=""
    )
    return rows.to_pylist()  # type: ignore[no-any-return]


def chain(prev: bytes, rows: Iterable[bytes]) -> list[bytes]:
    """The hash of each row, each chained from the one before (the first from ``prev``)."""
    out = []
    h = prev
    sha256 = hashlib.sha256
    for row in rows:
        h = sha256(h + row).digest()
        out.append(h)
    return out


def file_digest(path: Path) -> str:
    """SHA-256 of a whole file, hex (for files adopted from before the chain)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ_BYTES):
            h.update(block)
    return h.hexdigest()


def genesis(date: str, adopted: Sequence[tuple[str, str]] = ()) -> bytes:
    """What the first row of partition ``date`` chains from: the chain version, the date,
    and the (name, SHA-256) of each file the partition held before its chain began."""
    h = hashlib.sha256(_GENESIS_TAG + CHAIN_VERSION.to_bytes(4, "big") + date.encode())
    for name, digest in adopted:
        encoded = name.encode()
        h.update(len(encoded).to_bytes(4, "big") + encoded + bytes.fromhex(digest))
    return h.digest()


# ---------------------------------------------------------------------------- file links


@dataclass(frozen=True)
class FileLink:
    """One file's place in its partition's chain, as kept in its Parquet metadata."""

    version: int
    date: str
    seq: int  # 0 for the partition's first chained file
    prev: str  # hex hash the file's first row chains from
    last: str  # hex hash of its last row
    rows: int
    adopted: tuple[tuple[str, str], ...] = ()  # seq 0 only: earlier files, (name, sha256)

    def to_json(self) -> bytes:
        data = asdict(self)
        data["adopted"] = [list(a) for a in self.adopted]
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> FileLink:
        try:
            data = json.loads(raw)
            link = cls(
                version=_int(data["version"]),
                date=str(data["date"]),
                seq=_int(data["seq"]),
                prev=_hex_hash(data["prev"]),
                last=_hex_hash(data["last"]),
                rows=_int(data["rows"]),
                adopted=tuple((str(n), _hex_hash(d)) for n, d in data.get("adopted", [])),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ChainFormatError(f"chain metadata not in the writer's form: {e}") from None
        if link.version != CHAIN_VERSION:
            raise ChainFormatError(f"chain version {link.version} is not {CHAIN_VERSION}")
        return link


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value


def _hex_hash(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
        raise ValueError(f"{value!r} is not a SHA-256 in hex")
    return value


def read_link(path: Path) -> FileLink | None:
    """The chain link of Parquet file ``path``; None for a file written before the chain.
    Raises ChainFormatError when the metadata is there but malformed, OSError or
    pyarrow's errors when the file is unreadable."""
    metadata = pq.read_metadata(path).metadata or {}
    raw = metadata.get(LINK_KEY)
    return None if raw is None else FileLink.from_json(raw)


# ---------------------------------------------------------------------------- head record


@dataclass(frozen=True)
class Head:
    """The last file of a partition's chain, as the head record keeps it."""

    seq: int
    file: str
    last: str


def read_heads(data_dir: Path) -> dict[str, Head]:
    """``D/audit/heads.json`` by date; empty when there is none. Raises ChainFormatError
    when the file is not in the writer's form."""
    path = heads_path(data_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(raw)
        if data.get("version") != CHAIN_VERSION:
            raise ValueError(f"version {data.get('version')!r}")
        heads = {}
        for date, head in data["partitions"].items():
            partition_dir(data_dir, date)  # a date, or ValueError
            name = str(head["file"])
            if "/" in name or "\\" in name:
                raise ValueError(f"{name!r} is not a file name")
            heads[date] = Head(_int(head["seq"]), name, _hex_hash(head["last"]))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ChainFormatError(f"{path}: not a head record: {e}") from None
    return heads


def write_heads(data_dir: Path, heads: dict[str, Head]) -> None:
    """Replace ``D/audit/heads.json`` atomically (and durably)."""
    path = heads_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "version": CHAIN_VERSION,
        "partitions": {d: asdict(h) for d, h in sorted(heads.items())},
    }
    atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode() + b"\n")


# ---------------------------------------------------------------------------- the writer's side


@dataclass(frozen=True)
class _Tip:
    seq: int  # -1 before the first chained file
    last: bytes


class ChainWriter:
    """The tips of the store's chains for its one writer: seals each new file's rows and
    advances the head record once the file is durable.

    A partition's tip is read back the first time the writer writes to it: from the
    chained file with the highest sequence number (the file is the truth), checked
    against the head record. When the record is ahead of the files (a last file is gone),
    the chain continues after the record, so the gap stays visible to ``audit verify``
    rather than being papered over.
    """

    def __init__(self, root: Path):
        self.root = root
        try:
            self._heads = read_heads(root)
        except ChainFormatError as e:
            log.error("%s; starting a new head record (audit verify will report it)", e)
            self._heads = {}
        self._tips: dict[str, _Tip] = {}

    def seal(self, date: str, table: pa.Table) -> tuple[pa.Table, FileLink]:
        """``table`` (conformed rows of partition ``date``) with its ``row_hash`` column
        and chain metadata set, and the link it will add once written."""
        tip = self._tip(date)
        adopted: tuple[tuple[str, str], ...] = ()
        prev = tip.last
        if tip.seq < 0:
            adopted = self._adopted(date)
            prev = genesis(date, adopted)
        hashes = chain(prev, canonical_rows(table))
        link = FileLink(
            version=CHAIN_VERSION,
            date=date,
            seq=tip.seq + 1,
            prev=prev.hex(),
            last=hashes[-1].hex() if hashes else prev.hex(),
            rows=table.num_rows,
            adopted=adopted,
        )
        at = table.schema.get_field_index(ROW_HASH)
        column = pa.array([h.hex() for h in hashes], type=pa.string())
        sealed = table.set_column(at, TOOL_CALL_SCHEMA.field(ROW_HASH), column)
        sealed = sealed.replace_schema_metadata({LINK_KEY: link.to_json()})
        return sealed, link

    def advance(self, link: FileLink, file_name: str) -> None:
        """Record that the file holding ``link`` is durable: move the tip and rewrite the
        head record."""
        self._tips[link.date] = _Tip(link.seq, bytes.fromhex(link.last))
        self._heads[link.date] = Head(link.seq, file_name, link.last)
        write_heads(self.root, self._heads)

    def _tip(self, date: str) -> _Tip:
        tip = self._tips.get(date)
        if tip is None:
            tip = self._read_tip(date)
            self._tips[date] = tip
        return tip

    def _read_tip(self, date: str) -> _Tip:
        folder = partition_dir(self.root, date)
        files = partition_files(folder) if folder.is_dir() else []
        head = self._heads.get(date)
        hinted = folder / head.file if head else None
        if hinted is not None and hinted in files:
            # Only files written after the recorded head can be ahead of it.
            since = hinted.stat().st_mtime_ns
            files = [f for f in files if f == hinted or f.stat().st_mtime_ns >= since]
        best: tuple[int, str] | None = None
        for path in files:
            try:
                link = read_link(path)
            except (OSError, pa.ArrowException, ChainFormatError) as e:
                log.error("%s: chain link unreadable (%s); audit verify will report it", path, e)
                continue
            if link is not None and (best is None or link.seq > best[0]):
                best = (link.seq, link.last)
        tip = _Tip(-1, b"") if best is None else _Tip(best[0], bytes.fromhex(best[1]))
        if head is not None and head.seq > tip.seq:
            log.error(
                "partition %s: the head record names file %s (sequence %d) but the files end "
                "at sequence %d; continuing after the record so the gap stays visible",
                date,
                head.file,
                head.seq,
                tip.seq,
            )
            tip = _Tip(head.seq, bytes.fromhex(head.last))
        elif head is not None and head.seq == tip.seq and head.last != tip.last.hex():
            log.error(
                "partition %s: the head record and file %s disagree on the last hash; "
                "continuing from the file (audit verify will report it)",
                date,
                head.file,
            )
        return tip

    def _adopted(self, date: str) -> tuple[tuple[str, str], ...]:
        """The files of ``date`` written before its chain began, (name, SHA-256)."""
        folder = partition_dir(self.root, date)
        if not folder.is_dir():
            return ()
        return tuple((p.name, file_digest(p)) for p in partition_files(folder))
