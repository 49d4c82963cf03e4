"""The run directory's lock: one trainer per run directory.

Rank 0 takes RUN/run.lock (`data_pipeline.lock.WorkerLock`: atomic create, the holder's host, pid and
SLURM job, refreshed every 30 s) before the trainer writes anything, and removes it when the run ends.
A second trainer on the same directory is refused in one line. A lock whose holder is gone (its process
on this host has ended, its SLURM job was requeued, or it has not been refreshed for 5 minutes) is taken
over, so a crash or a requeue never blocks the next run for long. If the lock is taken over while this
trainer still runs, the trainer stops without saving (`RunLock.lost`).
"""

from __future__ import annotations

from pathlib import Path

from data_pipeline.lock import WorkerLock

RUN_LOCK = "run.lock"


def run_lock(run_dir: Path, *, break_lock: bool = False, stale_after_s: float | None = None) -> WorkerLock:
    """The lock of `run_dir` (not yet taken: `acquire()` it)."""
    extra = {} if stale_after_s is None else {"stale_after_s": stale_after_s}
    return WorkerLock(
        str(run_dir / RUN_LOCK), break_lock=break_lock,
        held_by="another trainer is running in this run directory",
        advice="wait for it to end or stop it (SIGUSR1 saves a checkpoint and exits), or pass --break-lock if it is dead",
        **extra,
    )
