"""The collector's lifecycle: recover, receive, spool, write, shut down.

Ordering promises (collector/README.md has the why):

1. At start, whatever the spool holds from a previous run is written to Parquet (rows
   already stored are dropped by the store's (trace_id, span_id) index) before the
   gRPC port opens.
2. An Export is acknowledged after its rows are fsync'ed in the spool and its policy
   documents are on disk.
3. A writer thread turns the spool into Parquet every ``batch_size`` spans or
   ``flush_interval_s`` seconds, whichever comes first, and deletes spool segments only
   once their rows are in durable Parquet files.
4. :meth:`Collector.stop` stops accepting, lets in-flight Exports finish, flushes
   everything and closes the spool, so a clean shutdown leaves the spool empty.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa

from callward.collector.config import CollectorConfig
from callward.collector.decode import DecodeLimits
from callward.collector.decode_pool import DecodedExport, DecodePool
from callward.collector.receiver import BusyError, TraceReceiver, serve
from callward.collector.spool import Spool, decode_rows
from callward.collector.store import StoreWriter, save_policy
from callward.grpc_auth import load_server_auth

log = logging.getLogger("callward.collector")

SPOOL_DIR = "spool"
LOCK_FILE = "collector.lock"
FORWARD_QUEUE_DIR = "forward-queue"


@dataclass
class CollectorStats:
    recovered_rows: int = 0
    flushes: int = 0
    flush_failures: int = 0
    policies_saved: int = 0


class Collector:
    """One collector over one data directory. ``start()``, then ``stop()`` (or ``run()``).

    The tokens and TLS files of the config are read here: a bad one raises
    :class:`callward.grpc_auth.AuthInvalid` before anything starts.
    """

    def __init__(self, config: CollectorConfig):
        self.config = config
        self.auth = load_server_auth(
            config.tokens, config.tls_cert, config.tls_key, config.tls_client_ca
        )
        self.data_dir = Path(config.data_dir).resolve()
        self.stats = CollectorStats()
        self.decoders = DecodePool(
            config.decode_workers,
            DecodeLimits(
                max_value_bytes=config.max_value_bytes,
                max_future_skew_s=config.max_future_skew_s,
            ),
        )
        self.writer: StoreWriter | None = None
        self.spool: Spool | None = None
        self.forwarder: Any = None
        self.receiver: TraceReceiver | None = None
        self.server: grpc.Server | None = None
        self.port = 0
        self._pending: list[bytes] = []  # spooled rows (Arrow IPC) not yet in Parquet
        self._pending_rows = 0
        self._last_ingest = 0.0
        self._cond: threading.Condition | None = None
        self._flush_lock = threading.Lock()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._lock_fd: int | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> int:
        """Recover, start writing and forwarding, open the port. Returns the bound port."""
        self._take_lock()
        try:
            return self._start_locked()
        except BaseException:
            self.stop(grace_s=0)  # release the lock, the workers and the writer thread
            raise

    def _start_locked(self) -> int:
        self.writer = StoreWriter(self.data_dir, view_in_child=True)
        self.spool = Spool(self.data_dir / SPOOL_DIR, fsync=self.config.fsync)
        self._recover()
        self.decoders.start()
        self._cond = threading.Condition(self.spool.lock)
        self._thread = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._thread.start()
        forward = None
        if self.config.forward:
            from callward.collector.forward import Forwarder

            self.forwarder = Forwarder(
                self.config.forward,
                self.data_dir / FORWARD_QUEUE_DIR,
                self.config.forward_queue_bytes,
            )
            self.forwarder.start()
            forward = self.forwarder.submit_serialized
        self.receiver = TraceReceiver(self.decoders.decode, self.ingest, forward, auth=self.auth)
        self.server, self.port = serve(
            self.receiver,
            self.config.listen,
            max_request_bytes=self.config.max_request_bytes,
            workers=self.config.workers,
        )
        log.info("collector listening on port %d, data in %s", self.port, self.data_dir)
        return self.port

    def _take_lock(self) -> None:
        """One collector per data directory: two would each replay and delete the other's
        spool segments. The lock dies with the process, SIGKILL included."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OSError(f"another collector is already using {self.data_dir}") from None
        self._lock_fd = fd

    def _recover(self) -> None:
        assert self.spool is not None and self.writer is not None
        tables: list[pa.Table] = []
        newest = 0
        for seq, payload in self.spool.recover():
            tables.append(decode_rows(payload))
            newest = max(newest, seq)
        if tables:
            before = self.writer.rows_written
            self.writer.write(pa.concat_tables(tables))
            self.stats.recovered_rows = self.writer.rows_written - before
            log.info(
                "recovered %d spooled row(s), %d new",
                sum(t.num_rows for t in tables),
                self.stats.recovered_rows,
            )
        self.spool.discard_through(newest)

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, finish in-flight Exports, flush everything, close. Idempotent."""
        if self._stopped.is_set():
            return
        if self.server is not None:
            self.server.stop(grace_s).wait()
        self.decoders.shutdown()
        if self._cond is not None:
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        if self.spool is not None:
            self.spool.close()
        if self.forwarder is not None:
            try:
                self.forwarder.shutdown()
            except Exception as e:
                log.warning("forwarder shutdown failed: %r", e)
        if self.writer is not None:
            self.writer.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    # --- the data path -----------------------------------------------------------------

    def ingest(self, result: DecodedExport) -> None:
        """Make ``result`` durable (policies, then rows in the spool). Called per Export."""
        for policy in result.policies:
            if save_policy(self.data_dir, policy.version, policy.document):
                self.stats.policies_saved += 1
        rows = result.num_rows
        if rows == 0:
            return
        payload = result.rows
        assert self._cond is not None and self.spool is not None
        with self._cond:
            if self._stopping:
                raise BusyError("collector is shutting down")
            if self._pending_rows >= self.config.max_pending_spans:
                raise BusyError("collector is behind on writing; retry later")
            self.spool.append_locked(payload)
            self._pending.append(payload)
            self._pending_rows += rows
            self._last_ingest = time.monotonic()
            if self._pending_rows >= self.config.batch_size:
                self._cond.notify_all()

    def _write_loop(self) -> None:
        """Flush every ``batch_size`` spans, every ``flush_interval_s`` at the latest, and
        as soon as Exports pause for ``idle_flush_s`` (when set): batches stay large under
        load, and rows reach Parquet (and readers) promptly when the traffic stops."""
        assert self._cond is not None
        idle = self.config.idle_flush_s
        while True:
            with self._cond:
                deadline = time.monotonic() + self.config.flush_interval_s
                while not self._stopping and self._pending_rows < self.config.batch_size:
                    now = time.monotonic()
                    if idle and self._pending_rows and now - self._last_ingest >= idle:
                        break
                    remaining = deadline - now
                    if remaining <= 0:
                        break
                    self._cond.wait(min(remaining, idle) if idle else remaining)
                stopping = self._stopping
            self.flush()
            if stopping:
                return

    def flush(self) -> int:
        """Write every pending row to Parquet now; returns the rows written."""
        assert self._cond is not None and self.spool is not None and self.writer is not None
        with self._flush_lock:
            with self._cond:
                payloads, self._pending = self._pending, []
                rows, self._pending_rows = self._pending_rows, 0
                sealed = self.spool.rotate_locked()
            if not payloads:
                return 0
            before = self.writer.rows_written
            try:
                self.writer.write(pa.concat_tables([decode_rows(p) for p in payloads]))
            except Exception as e:
                # The rows stay in the spool and in memory; the next flush tries again.
                self.stats.flush_failures += 1
                log.error("writing %d row(s) to Parquet failed: %r; will retry", rows, e)
                with self._cond:
                    self._pending[:0] = payloads
                    self._pending_rows += rows
                return 0
            self.spool.discard_through(sealed)
            self.stats.flushes += 1
            return self.writer.rows_written - before

    @property
    def pending_rows(self) -> int:
        return self._pending_rows
