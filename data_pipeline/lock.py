"""An exclusive, self-refreshing lock file on a local path or S3, for one encoder worker's output.

    with WorkerLock(storage.join(root, "_progress", "w00000-of00001.lock")):
        ...  # only this process writes worker 0's shards and records

The lock is a small JSON file {host, pid, token, started, refreshed} created atomically (O_EXCL
locally, a conditional PUT on S3), so of two encoders started on the same output the second one is
refused with a line naming the holder. The holder rewrites `refreshed` every `refresh_s` seconds from
a background thread. A lock is abandoned, and taken over, when its holder's process is gone (same
host) or it has not been refreshed for `stale_after_s` seconds (a killed job on another node), so a
re-run after a crash or preemption is never blocked for long. `break_lock=True` takes it over at once.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from types import TracebackType
from typing import Any

from data_pipeline import storage

STALE_AFTER_S = 300.0
REFRESH_S = 30.0


class LockHeld(RuntimeError):
    """Another live process holds the lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class WorkerLock:
    def __init__(self, uri: str, *, stale_after_s: float = STALE_AFTER_S, refresh_s: float = REFRESH_S,
                 break_lock: bool = False) -> None:
        self.uri, self.stale_after_s, self.refresh_s, self.break_lock = uri, stale_after_s, refresh_s, break_lock
        self.token = uuid.uuid4().hex
        self.record: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token}
        self.lost: str | None = None
        """Set (to a reason) by the refresh thread when another process took the lock over."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _payload(self) -> bytes:
        now = time.time()
        self.record.setdefault("started", now)
        self.record["refreshed"] = now
        return (json.dumps(self.record, sort_keys=True) + "\n").encode()

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(storage.read_bytes(self.uri))
        except storage.MissingError:
            return None
        except ValueError:  # a holder killed while creating it: empty or partial
            return {}

    def abandoned_reason(self, held: dict[str, Any]) -> str | None:
        """Why the lock described by `held` may be taken over, or None while its holder looks alive."""
        age = time.time() - float(held.get("refreshed", 0))
        if held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int) and not _alive(held["pid"]):
            return f"its process {held['pid']} on this host is gone"
        if age > self.stale_after_s:
            return f"not refreshed for {age:.0f} s (> {self.stale_after_s:.0f} s)"
        return None

    def acquire(self) -> None:
        for _ in range(3):
            if storage.create_exclusive(self.uri, self._payload()):
                self._start_refresh()
                return
            held = self._read()
            if held is None:  # released in between
                continue
            reason = "--break-lock was given" if self.break_lock else self.abandoned_reason(held)
            if reason is None:
                age = time.time() - float(held.get("refreshed", 0))
                raise LockHeld(
                    f"{self.uri}: another encoder is writing this worker's output (host {held.get('host')}, pid "
                    f"{held.get('pid')}, lock refreshed {age:.0f} s ago); run one encoder per --worker-index, or "
                    f"pass --break-lock if that one is dead (a lock not refreshed for {self.stale_after_s:.0f} s "
                    "is taken over on its own)"
                )
            storage.delete(self.uri)  # abandoned: take it over (the next create_exclusive decides any race)
        raise LockHeld(f"{self.uri}: could not take the lock (other processes keep taking it)")

    def _start_refresh(self) -> None:
        def refresh() -> None:
            while not self._stop.wait(self.refresh_s):
                try:
                    held = self._read()
                    if held is not None and held.get("token") != self.token:
                        self.lost = f"{self.uri}: the lock was taken over by host {held.get('host')} pid {held.get('pid')}"
                        return
                    storage.write_bytes(self.uri, self._payload())
                except storage.StorageError:
                    continue  # a transient failure; the lock stays valid until stale_after_s

        self._thread = threading.Thread(target=refresh, name="vidgpt-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop refreshing and remove the lock if it is still ours. When the storage cannot be reached
        the lock stays behind and is taken over once stale; that is said on stderr, never raised."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            held = self._read()
            if held is not None and held.get("token") == self.token:
                storage.delete(self.uri)
        except storage.StorageError as exc:
            print(f"warning: could not remove the lock {self.uri} ({exc}); the next run takes it over after "
                  f"{self.stale_after_s:.0f} s, or at once with --break-lock", file=sys.stderr)

    def __enter__(self) -> WorkerLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
