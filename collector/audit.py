"""Verify the store's hash chains (:mod:`.chain`): ``callward audit verify D``.

Read-only. For each date partition the files are put in chain order by their sequence
numbers and every row's hash is recomputed from the file's own values; the first broken
link is reported with the file, the row, its ids and start time, and what it covers:
from where on the partition's trail can no longer be trusted. Files written before the
chain existed are reported as unchained, not as tampering. docs/audit.md lists what is
detected and what is not.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from callward.collector.chain import (
    ChainFormatError,
    FileLink,
    Head,
    canonical_rows,
    chain,
    file_digest,
    genesis,
    read_heads,
    read_link,
)
from callward.record import (
    RECORD_COLUMNS,
    ROW_HASH,
    TOOL_CALL_SCHEMA,
    data_files,
    heads_path,
    partition_date,
    partition_dir,
)

# What a break is, as reported (``kind`` in the JSON output).
BREAK_KINDS = {
    "unreadable": "the file cannot be read",
    "bad_link": "the file's chain metadata is not in the writer's form",
    "not_in_chain": "an unchained file in a chained partition, not one the chain adopted",
    "adopted_changed": "a file from before the chain is missing or changed",
    "wrong_partition": "the file's chain belongs to another partition",
    "duplicate_file": "two files claim the same place in the chain",
    "missing_file": "files are missing from the chain",
    "beyond_head": "a file past the head record that does not chain from the last file",
    "bad_prev": "the file does not chain from the file before it",
    "bad_columns": "the file's columns are not the schema's",
    "row_changed": "a row's hash does not match its values and the row before it",
    "rows_missing": "the file holds fewer or more rows than its chain link says",
    "truncated_tail": "the head record names files that are gone",
    "head_changed": "the head record and the last file disagree",
    "head_stale": "the head record is behind by more than one file",
}


@dataclass(frozen=True)
class Break:
    """The first broken link of a partition and what it covers."""

    kind: str
    message: str
    file: str | None = None  # relative to the data directory
    row: int | None = None  # index in the file
    trace_id: str | None = None
    span_id: str | None = None
    start_time: str | None = None
    covers: str = ""  # from where on the partition's trail can no longer be trusted
    untrusted_files: int = 0
    untrusted_rows: int = 0


@dataclass
class PartitionAudit:
    date: str
    files: int = 0
    chained_files: int = 0
    unchained_files: int = 0  # written before the chain (adopted ones included)
    rows: int = 0  # rows verified intact
    head: Head | None = None
    head_lags: bool = False  # one file ahead of the head record (a crash before its update)
    broken: Break | None = None

    @property
    def status(self) -> str:
        if self.broken is not None:
            return "broken"
        if self.chained_files == 0:
            return "unchained"
        return "intact"


@dataclass
class AuditReport:
    data_dir: str
    partitions: list[PartitionAudit] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # about the store as a whole

    @property
    def ok(self) -> bool:
        return not self.problems and all(p.broken is None for p in self.partitions)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "data_dir": self.data_dir,
            "problems": self.problems,
            "partitions": [
                {
                    "date": p.date,
                    "status": p.status,
                    "files": p.files,
                    "chained_files": p.chained_files,
                    "unchained_files": p.unchained_files,
                    "rows_verified": p.rows,
                    "head": asdict(p.head) if p.head else None,
                    "head_lags_one_file": p.head_lags,
                    "break": asdict(p.broken) if p.broken else None,
                }
                for p in self.partitions
            ],
        }


@dataclass(frozen=True)
class _Chained:
    path: Path
    link: FileLink


def verify_store(data_dir: Path) -> AuditReport:
    """Check every partition's chain and the head record of ``data_dir``."""
    root = Path(data_dir)
    report = AuditReport(str(root))
    try:
        heads = read_heads(root)
    except ChainFormatError as e:
        report.problems.append(str(e))
        heads = {}
    by_date: dict[str, list[Path]] = defaultdict(list)
    for path in data_files(root):
        date = partition_date(path)
        if date is not None:
            by_date[date].append(path)
    for date in sorted(set(by_date) | set(heads)):
        report.partitions.append(_verify_partition(root, date, by_date.get(date, []), heads))
    return report


def _rel(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _verify_partition(
    root: Path, date: str, files: list[Path], heads: dict[str, Head]
) -> PartitionAudit:
    audit = PartitionAudit(date, files=len(files), head=heads.get(date))
    chained: list[_Chained] = []
    unchained: list[Path] = []
    first_problem: Break | None = None
    for path in files:
        try:
            link = read_link(path)
        except ChainFormatError as e:
            first_problem = first_problem or _file_break(root, path, "bad_link", str(e))
            continue
        except (OSError, pa.ArrowException) as e:
            first_problem = first_problem or _file_break(root, path, "unreadable", str(e))
            continue
        if link is None:
            unchained.append(path)
        else:
            chained.append(_Chained(path, link))
    chained.sort(key=lambda c: (c.link.seq, c.path.name))
    audit.chained_files = len(chained)
    audit.unchained_files = len(unchained)
    if first_problem is not None:
        audit.broken = first_problem
        return audit
    if not chained and audit.head is None:
        return audit  # written before the chain existed: nothing to check
    audit.broken = (
        _check_adopted(root, date, chained, unchained)
        or _walk(root, date, chained, audit)
        or _check_head(root, date, chained, audit)
    )
    return audit


def _file_break(root: Path, path: Path, kind: str, detail: str, rows: int = 0) -> Break:
    return Break(
        kind=kind,
        message=f"{BREAK_KINDS[kind]}: {detail}",
        file=_rel(root, path),
        covers=f"the file {path.name}",
        untrusted_files=1,
        untrusted_rows=rows,
    )


def _check_adopted(
    root: Path, date: str, chained: list[_Chained], unchained: list[Path]
) -> Break | None:
    """Unchained files must be the ones the partition's first chained file adopted."""
    adopted = dict(chained[0].link.adopted) if chained and chained[0].link.seq == 0 else {}
    present = {p.name: p for p in unchained}
    for name, digest in adopted.items():
        path = present.get(name)
        if path is None:
            return Break(
                kind="adopted_changed",
                message=f"{BREAK_KINDS['adopted_changed']}: {name} is gone",
                file=_rel(root, partition_dir(root, date) / name),
                covers=f"the rows of {name}, written before the chain began",
                untrusted_files=1,
            )
        if file_digest(path) != digest:
            return _file_break(root, path, "adopted_changed", f"{name} changed since adopted")
    for path in unchained:
        if path.name not in adopted:
            rows = _row_count(path)
            return _file_break(root, path, "not_in_chain", f"{path.name} has no chain link", rows)
    return None


def _row_count(path: Path) -> int:
    try:
        return int(pq.read_metadata(path).num_rows)
    except (OSError, pa.ArrowException):
        return 0


def _chain_break(
    kind: str,
    message: str,
    root: Path,
    chained: list[_Chained],
    at: int,
    row: int = 0,
    ids: dict[str, Any] | None = None,
    before: str = "",
) -> Break:
    """A break at file ``at`` of the chain, row ``row``: the trail from there on is untrusted."""
    files = len(chained) - at
    rows = max(chained[at].link.rows - row, 0) + sum(c.link.rows for c in chained[at + 1 :])
    name = chained[at].path.name
    where = f"row {row} of {name}" if row else name
    start = (ids or {}).get("start_time")
    return Break(
        kind=kind,
        message=f"{BREAK_KINDS[kind]}: {message}",
        file=_rel(root, chained[at].path),
        row=row if ids is not None or row else None,
        trace_id=(ids or {}).get("trace_id"),
        span_id=(ids or {}).get("span_id"),
        start_time=start.isoformat() if start is not None else None,
        covers=f"{before}{where} onwards: {rows} row(s) in {files} file(s)",
        untrusted_files=files,
        untrusted_rows=rows,
    )


def _walk(root: Path, date: str, chained: list[_Chained], audit: PartitionAudit) -> Break | None:
    """Follow the chain file by file and row by row; the first break, or None."""
    prev = genesis(date, chained[0].link.adopted) if chained else b""
    head = audit.head
    for at, item in enumerate(chained):
        expected = at  # every file before this one held its own place
        seq = item.link.seq
        group = [c for c in chained[at:] if c.link.seq == seq]
        if seq > expected:
            name = chained[at].path.name
            if head is not None and seq > head.seq + 1 and chained[at].link.prev != prev.hex():
                msg = f"{name} claims place {seq}, after the head record's place {head.seq}"
                return _chain_break("beyond_head", msg, root, chained, at)
            gap = f"{expected}" if seq == expected + 1 else f"{expected}-{seq - 1}"
            msg = f"the file(s) at place {gap}, before {name}, are gone"
            before = "the rows of the missing file(s), then "
            return _chain_break("missing_file", msg, root, chained, at, before=before)
        if len(group) > 1:
            return _intruder(root, date, group, chained[at + len(group) :], prev, head)
        link, name = item.link, item.path.name
        if link.date != date:
            return _chain_break("wrong_partition", f"{name} is of {link.date}", root, chained, at)
        if link.prev != prev.hex():
            after = "the partition's start" if at == 0 else chained[at - 1].path.name
            msg = f"{name} does not chain from {after}"
            return _chain_break("bad_prev", msg, root, chained, at)
        found = _verify_rows(root, chained, at, prev)
        if found is not None:
            return found
        prev = bytes.fromhex(link.last)
        audit.rows += link.rows
    return None


def _intruder(
    root: Path,
    date: str,
    group: list[_Chained],
    after: list[_Chained],
    prev: bytes,
    head: Head | None,
) -> Break:
    """Two or more files claim one place: the one the chain goes on from is the trail's
    (it chains from the file before, and the next file or the head record chains from
    it); the break is another one, and covers that file alone."""
    fits = [c for c in group if c.link.date == date and c.link.prev == prev.hex()]
    if len(fits) > 1:
        successors = {c.link.prev for c in after if c.link.seq == group[0].link.seq + 1}
        if head is not None and head.seq == group[0].link.seq:
            successors.add(head.last)
        fits = [c for c in fits if c.link.last in successors]
    names = " and ".join(c.path.name for c in group)
    if len(fits) != 1:
        return Break(
            kind="duplicate_file",
            message=f"{BREAK_KINDS['duplicate_file']}: {names} claim place {group[0].link.seq}",
            file=_rel(root, group[0].path),
            covers=f"{names} and every file after them",
            untrusted_files=len(group) + len(after),
            untrusted_rows=sum(c.link.rows for c in (*group, *after)),
        )
    other = next(c for c in group if c is not fits[0])
    msg = f"{other.path.name} claims place {other.link.seq}, held by {fits[0].path.name}"
    return _file_break(root, other.path, "duplicate_file", msg, other.link.rows)


def _verify_rows(root: Path, chained: list[_Chained], at: int, prev: bytes) -> Break | None:
    path, link = chained[at].path, chained[at].link
    schema = pq.read_schema(path)
    for column in (*RECORD_COLUMNS, ROW_HASH):
        want = TOOL_CALL_SCHEMA.field(column).type
        if column not in schema.names or schema.field(column).type != want:
            msg = f"column {column} of {path.name} is missing or not {want}"
            return _chain_break("bad_columns", msg, root, chained, at)
    table = pq.read_table(path, columns=[*RECORD_COLUMNS, ROW_HASH])
    computed = [h.hex() for h in chain(prev, canonical_rows(table))]
    stored = table.column(ROW_HASH).to_pylist()
    for row, (mine, theirs) in enumerate(zip(computed, stored, strict=True)):
        if mine != theirs:
            ids = table.select(["trace_id", "span_id", "start_time"]).slice(row, 1).to_pylist()[0]
            msg = f"row {row} of {path.name}"
            return _chain_break("row_changed", msg, root, chained, at, row, ids)
    last = computed[-1] if computed else prev.hex()
    if table.num_rows != link.rows or last != link.last:
        msg = f"{path.name} holds {table.num_rows} row(s), its link says {link.rows}"
        if table.num_rows == link.rows:
            msg = f"{path.name} does not end with the hash its link records"
        return _chain_break("rows_missing", msg, root, chained, at, min(table.num_rows, link.rows))
    return None


def _check_head(
    root: Path, date: str, chained: list[_Chained], audit: PartitionAudit
) -> Break | None:
    """The last file against the head record (which may lag by one file after a crash)."""
    head = audit.head
    top = chained[-1].link.seq if chained else -1
    recorded = head.seq if head is not None else -1
    record = _rel(root, heads_path(root))
    if head is not None and top < recorded:
        gone = f"{top + 1}" if recorded == top + 1 else f"{top + 1}-{recorded}"
        return Break(
            "truncated_tail",
            f"{BREAK_KINDS['truncated_tail']}: {record} names {head.file} at place "
            f"{recorded}, but the files end at place {top}",
            file=head.file,
            covers=f"the rows of the file(s) at place {gone}, after the last file present",
        )
    # The head record is the last file's link, or the one before it after a crash.
    at = len(chained) - 1 if top == recorded else len(chained) - 2
    if head is not None and top in (recorded, recorded + 1) and chained[at].link.last != head.last:
        msg = f"{record} records a last hash that {chained[at].path.name} does not end with"
        return _chain_break("head_changed", msg, root, chained, at)
    if top == recorded + 1:
        audit.head_lags = True
        return None
    if top > recorded + 1:
        return Break(
            "head_stale",
            f"{BREAK_KINDS['head_stale']}: {record} is at place {recorded}, the files reach "
            f"place {top}",
            file=_rel(root, chained[-1].path),
            covers=f"nothing proves no file after {chained[-1].path.name} was removed",
        )
    return None
