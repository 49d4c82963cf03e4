"""An exclusive, self-refreshing lock file on a local path or S3: one encoder worker's output, one
trainer's run directory.

    with WorkerLock(storage.join(root, "_progress", "w00000-of00001.lock")):
        ...  # only this process writes worker 0's shards and records

The lock is a small JSON file {host, pid, token, started, refreshed, and under SLURM slurm_job and
slurm_restart} created atomically (O_EXCL locally, a conditional PUT on S3), so of two processes
started on the same output the second one is refused with a line naming the holder. The holder
rewrites `refreshed` every `refresh_s` seconds from a background thread. A lock is abandoned, and taken
over, when its holder's process is gone (same host), when it was taken by an earlier run of the same
SLURM job (a requeued job's new run, on whatever node), or when it has not been refreshed for
`stale_after_s` seconds (a killed job on another node), so a re-run after a crash or preemption is
never blocked for long. `break_lock=True` takes it over at once.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Mapping
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


def slurm_job(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """This process's SLURM job and how often it was requeued ({} outside SLURM): a requeued job keeps
    its id and counts SLURM_RESTART_COUNT up."""
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return {}
    restart = environ.get("SLURM_RESTART_COUNT", "0")
    return {"slurm_job": job, "slurm_restart": int(restart) if restart.isdigit() else 0}


class WorkerLock:
    def __init__(self, uri: str, *, stale_after_s: float = STALE_AFTER_S, refresh_s: float = REFRESH_S,
                 break_lock: bool = False, held_by: str = "another encoder is writing this worker's output",
                 advice: str = "run one encoder per --worker-index, or pass --break-lock if that one is dead",
                 environ: Mapping[str, str] = os.environ) -> None:
        """held_by, advice: how the refusal describes the holder and what to do (each tool its own words)."""
        self.uri, self.stale_after_s, self.refresh_s, self.break_lock = uri, stale_after_s, refresh_s, break_lock
        self.held_by, self.advice = held_by, advice
        self.token = uuid.uuid4().hex
        self.record: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                                       **slurm_job(environ)}
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
        mine = self.record.get("slurm_job")
        if mine is not None and held.get("slurm_job") == mine and isinstance(held.get("slurm_restart"), int) \
                and held["slurm_restart"] < self.record["slurm_restart"]:
            return f"it was taken by run {held['slurm_restart']} of SLURM job {mine}, which was requeued since"
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
                job = f", SLURM job {held['slurm_job']}" if held.get("slurm_job") else ""
                raise LockHeld(
                    f"{self.uri}: {self.held_by} (host {held.get('host')}, pid {held.get('pid')}{job}, lock refreshed "
                    f"{age:.0f} s ago); {self.advice} (a lock not refreshed for {self.stale_after_s:.0f} s is taken "
                    "over on its own)"
                )
            print(f"{self.uri}: taking the lock over ({reason})", file=sys.stderr, flush=True)
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
