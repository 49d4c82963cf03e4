"""Nothing hangs in silence: a rank that waits far longer than a step takes says so, and a collective
that never completes ends the run in a way SLURM can requeue.

- `StallWatchdog`: a thread on every rank. The trainer labels what the rank is doing (`phase`: a step's
  forward/backward with ZeRO-3's gathers, an all-reduce, a checkpoint save); once one phase has lasted
  longer than `training.stall_warning_s` and 10x a typical step, one line names the rank, the step and
  what it waits for. The rank that prints nothing is the stalled one.
- The process group's timeout (`training.collective_timeout_s`, gloo and NCCL alike) then fails the
  waiting collective; `collective_failure` recognises that error, so the trainer exits 75 (requeue; resume
  from the last checkpoint) with one line instead of a traceback. A peer whose connection closed (it
  crashed, its node is lost) is said the same way, with exit 1: requeueing a crash would repeat it.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator

TIMED_OUT = ("timed out", "timeout", "nccl communicator was aborted")
GONE = ("connection closed by peer", "connection reset by peer", "broken pipe", "socket closed")
"""Lower-case fragments of the errors gloo and NCCL raise when another rank stopped answering (timed out)
or went away (its connection closed: a crash, a node lost)."""


def collective_failure(exc: BaseException) -> str | None:
    """"timeout" when `exc` is a collective that gave up waiting for a stalled rank, "gone" when a peer's
    connection closed, else None."""
    if not isinstance(exc, RuntimeError):
        return None
    text = str(exc).lower()
    if any(fragment in text for fragment in TIMED_OUT):
        return "timeout"
    return "gone" if any(fragment in text for fragment in GONE) else None


class StallWatchdog:
    def __init__(self, rank: int, warn_after_s: float, timeout_s: float, *, poll_s: float = 0.5) -> None:
        self.rank, self.warn_after_s, self.timeout_s, self.poll_s = rank, warn_after_s, timeout_s, poll_s
        self.steps: deque[float] = deque(maxlen=50)  # recent step times, s
        self._what: str | None = None
        self.failed_in: str | None = None
        """The phase an exception left (what the rank was waiting for when a collective failed)."""
        self._since = 0.0
        self._said = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="vidgpt-watchdog", daemon=True)
        self._thread.start()

    @property
    def typical_step_s(self) -> float:
        return statistics.median(self.steps) if self.steps else 0.0

    def step_took(self, seconds: float) -> None:
        self.steps.append(seconds)

    @contextlib.contextmanager
    def phase(self, what: str) -> Iterator[None]:
        """Label what this rank does (and may wait on) inside the block."""
        with self._lock:
            outer = (self._what, self._since, self._said)
            self._what, self._since, self._said = what, time.monotonic(), False
        try:
            yield
        except BaseException:
            self.failed_in = self.failed_in or what
            raise
        finally:
            with self._lock:
                self._what, self._since, self._said = outer if outer[0] is not None else (None, 0.0, False)

    def threshold_s(self) -> float:
        return max(self.warn_after_s, 10 * self.typical_step_s)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            with self._lock:
                what, since, said = self._what, self._since, self._said
                waited = time.monotonic() - since
                if what is None or said or waited < self.threshold_s():
                    continue
                self._said = True
            typical = f"a step takes {self.typical_step_s:.2g} s" if self.steps else "no step has finished yet"
            print(f"rank {self.rank}: waiting {waited:.0f} s for {what} ({typical}); another rank may be stalled or "
                  f"gone. The run stops once training.collective_timeout_s = {self.timeout_s:g} s have passed",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
