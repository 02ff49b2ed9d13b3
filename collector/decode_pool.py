"""Decoding off the gRPC threads, in worker processes.

Decoding is per-attribute Python work on protobuf objects and holds the GIL, so one
process tops out well below what the network, the spool and Parquet can take. A pool of
``spawn``ed worker processes decodes Exports in parallel and hands back rows already
encoded for the spool (Arrow IPC), so the main process mostly moves bytes.

``workers=0`` decodes in the calling thread instead, through the very same function
(:func:`decode_export`), so there is one implementation of the semantics either way.

Workers are ``spawn``ed, not forked (a fork would copy the gRPC server's threads and
locks), and each exits on its own when the collector process is gone, even after a
SIGKILL (:func:`_exit_with_parent`). A worker that dies (say, killed by the OOM killer) breaks the pool; the
Export in flight gets UNAVAILABLE (clients retry) and the pool is rebuilt.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from callward.collector.decode import DecodeLimits, Decoder, PolicyDocument
from callward.collector.lean import keep_pandas_out
from callward.collector.otlp_parse import parse_request
from callward.collector.spool import encode_rows

log = logging.getLogger("callward.collector.decode")

_PARENT_CHECK_S = 0.5


class DecodeUnavailableError(RuntimeError):
    """A decode worker died; the request may be retried."""


@dataclass(frozen=True)
class DecodedExport:
    """One Export, decoded: what the spool, the store and the response need."""

    rows: bytes  # Arrow IPC stream of tool-call rows; b"" when there are none
    num_rows: int
    policies: tuple[PolicyDocument, ...]
    spans_seen: int
    rejected: int
    error_message: str
    repaired: bool
    forward: bytes  # the redacted request to pass on; b"" unless asked for


_decoders: dict[DecodeLimits, Decoder] = {}


def decode_export(data: bytes, now_ns: int, limits: DecodeLimits, forward: bool) -> DecodedExport:
    """Parse, (for forwarding) redact in place, and decode one serialized Export."""
    decoder = _decoders.get(limits)
    if decoder is None:
        decoder = _decoders[limits] = Decoder(limits)
    result, repaired = decoder.decode_bytes(data, now_ns)
    forwarded = b""
    if forward:  # the whole request, typed, redacted, for the backend
        request, _ = parse_request(data)
        decoder.redact_in_place(request)
        forwarded = request.SerializeToString()
    rows = result.table.num_rows
    return DecodedExport(
        rows=encode_rows(result.table) if rows else b"",
        num_rows=rows,
        policies=tuple(result.policies),
        spans_seen=result.spans_seen,
        rejected=result.rejected,
        error_message=result.error_message(),
        repaired=repaired,
        forward=forwarded,
    )


def _warm_up(limits: DecodeLimits, linger_s: float) -> int:
    """Import and build what decoding needs; returns the worker's pid. Lingers a moment
    so that the other warm-up tasks go to the other workers."""
    decode_export(ExportTraceServiceRequest().SerializeToString(), 0, limits, True)
    time.sleep(linger_s)
    return os.getpid()


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start workers without re-importing the program's main module in each of them.

    ``spawn`` re-imports ``__main__`` in every child. Started as ``callward collector``,
    that module imports every component of callward (MCP, replay, ...), which costs each
    worker seconds and tens of megabytes for nothing it uses. multiprocessing skips that
    step for a main module with neither a ``__spec__`` name nor a ``__file__``, so both are
    hidden while the workers start. Only called before the port opens or under the pool
    lock, from one thread.
    """
    main = sys.modules["__main__"]
    saved = {name: getattr(main, name) for name in ("__spec__", "__file__") if hasattr(main, name)}
    try:
        main.__spec__ = None
        if hasattr(main, "__file__"):
            del main.__file__
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


def _init_worker() -> None:
    keep_pandas_out()
    # Ctrl-C reaches the whole process group; only the main process decides to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A worker outlives a SIGKILLed collector otherwise: each child holds both ends of
    its task pipe, so it never sees end-of-file. When the parent is gone the worker is
    re-parented, which is what this watches for."""
    while os.getppid() == parent:
        time.sleep(_PARENT_CHECK_S)
    os._exit(0)


class DecodePool:
    """Runs :func:`decode_export` in ``workers`` processes, or inline when ``workers=0``."""

    def __init__(self, workers: int, limits: DecodeLimits):
        self.workers = workers
        self.limits = limits
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self.restarts = 0

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
        )

    def start(self) -> None:
        """Start the workers and wait until each has imported everything it needs."""
        if self.workers <= 0:
            _warm_up(self.limits, 0.0)
            return
        self._executor = self._started_executor()

    def _started_executor(self) -> ProcessPoolExecutor:
        executor = self._new_executor()
        # Workers are spawned on submit; spawn them all now, with the main module hidden,
        # and wait until each has run a task: a worker still starting when the collector
        # is killed would never learn that its parent is gone (_exit_with_parent).
        ready: set[int] = set()
        linger = 0.05
        while len(ready) < self.workers:
            with _main_module_hidden():
                warm = [executor.submit(_warm_up, self.limits, linger) for _ in range(self.workers)]
            ready.update(f.result() for f in warm)
            linger = min(2 * linger, 1.0)
        return executor

    def decode(self, data: bytes, now_ns: int, forward: bool) -> DecodedExport:
        executor = self._executor
        if executor is None:
            return decode_export(data, now_ns, self.limits, forward)
        try:
            future: Future[DecodedExport] = executor.submit(
                decode_export, data, now_ns, self.limits, forward
            )
        except RuntimeError as e:  # shut down (we are stopping) or broken
            if isinstance(e, BrokenProcessPool):
                self._replace(executor)
            raise DecodeUnavailableError(f"decode workers unavailable: {e}") from None
        try:
            return future.result()
        except BrokenProcessPool as e:
            self._replace(executor)
            raise DecodeUnavailableError(f"decode worker died: {e}") from None

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is not broken or self._executor is None:
                return
            log.error("a decode worker died; starting a new pool")
            broken.shutdown(wait=False, cancel_futures=True)
            self._executor = None  # decode inline while the new workers start
            self._executor = self._started_executor()
            self.restarts += 1

    def shutdown(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
