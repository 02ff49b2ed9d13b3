"""Hot reload of the policy file, on change and on demand (SIGHUP).

A new policy is validated completely before it is put in force; an invalid one is
refused, its errors are logged as ``FILE:LINE:COL: code: message`` lines and the old
policy stays in force. The file is polled (mtime, size, inode, then a content hash)
rather than watched with inotify so that it also works on network and container
file systems and with editors that replace the file by renaming.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from callward.enforcer.errors import PolicyInvalid
from callward.enforcer.policy import CompiledPolicy, load_policy
from callward.enforcer.server import PolicySwap

log = logging.getLogger("callward.enforcer.reload")

ReloadStatus = Literal["applied", "unchanged", "refused"]


@dataclass(frozen=True)
class ReloadOutcome:
    """What one reload attempt did; ``version`` is the policy in force afterwards."""

    status: ReloadStatus
    version: str
    errors: tuple[str, ...] = ()
    swap: PolicySwap | None = None


class PolicyReloader:
    """Re-reads one policy file and hands each new valid version to ``apply``.

    ``apply`` puts a policy in force and says what changed (``EnforcerService.swap_policy``,
    which keeps counters by :func:`callward.enforcer.limits.surviving_counters`);
    ``current`` returns the version in force, so a reload of identical content is a no-op.
    """

    def __init__(
        self,
        path: str | Path,
        apply: Callable[[CompiledPolicy], PolicySwap],
        current: Callable[[], str],
        *,
        interval_s: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self.apply = apply
        self.current = current
        self.interval_s = interval_s
        self.last_outcome: ReloadOutcome | None = None
        self._stat = self._stat_key()
        self._digest = self._content_digest()
        self._forced = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._check_lock = threading.Lock()

    # ----------------------------------------------------------------- one attempt

    def check(self, force: bool = False) -> ReloadOutcome | None:
        """Reload if the file changed (or always, with ``force``); None when nothing changed."""
        with self._check_lock:
            stat = self._stat_key()
            if not force and stat == self._stat:
                return None
            self._stat = stat
            digest = self._content_digest()
            if not force and digest == self._digest:
                return None  # touched, or rewritten with the same bytes
            self._digest = digest
            outcome = self._reload()
            self.last_outcome = outcome
            return outcome

    def _reload(self) -> ReloadOutcome:
        in_force = self.current()
        try:
            policy = load_policy(self.path)
        except PolicyInvalid as e:
            log.error(
                "policy reload refused; %s stays in force. %d error(s):\n%s",
                in_force,
                len(e.errors),
                e.report(),
            )
            return ReloadOutcome("refused", in_force, tuple(str(x) for x in e.errors))
        if policy.version == in_force:
            log.info("policy %s unchanged (%s)", in_force, self.path)
            return ReloadOutcome("unchanged", in_force)
        swap = self.apply(policy)
        log.info(
            "policy reloaded: %s -> %s from %s; counters kept: %s; reset: %s",
            swap.old_version,
            swap.new_version,
            self.path,
            ", ".join(swap.kept) or "none",
            ", ".join(swap.reset) or "none",
        )
        return ReloadOutcome("applied", policy.version, swap=swap)

    def _stat_key(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _content_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    # ----------------------------------------------------------------- the watcher thread

    def request_reload(self) -> None:
        """Ask the watcher thread to reload now; safe to call from a signal handler."""
        self._forced = True
        self._wake.set()

    def start(self) -> None:
        """Poll the file every ``interval_s`` (0: only on :meth:`request_reload`)."""
        self._thread = threading.Thread(target=self._run, name="policy-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        timeout = self.interval_s if self.interval_s > 0 else None
        while not self._stop.is_set():
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stop.is_set():
                return
            forced, self._forced = self._forced, False
            try:
                self.check(force=forced)
            except Exception:
                log.exception("policy reload failed; the policy in force is unchanged")


__all__ = ["PolicyReloader", "ReloadOutcome", "ReloadStatus"]
