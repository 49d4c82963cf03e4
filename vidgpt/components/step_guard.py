"""Preemption and non-finite losses: the two reasons a step does not simply go on.

- `StopFlag`: set by SIGUSR1, SIGTERM or SIGINT (Ctrl-C); the ranks agree on it at every step, then the
  trainer saves and exits 75.
- `NonFiniteGuard`: a step whose loss is not finite on some rank is skipped on every rank; after
  `training.max_bad_steps` in a row, training stops.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from vidgpt.errors import TrainingError


class StopFlag:
    """Set by SIGUSR1, SIGTERM or SIGINT once installed; `requested` is read at every step."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True


class NonFiniteGuard:
    """Counts skipped steps: `skipped` in the whole run, `in_a_row` since the last good one."""

    def __init__(self, max_in_a_row: int) -> None:
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self.skipped = 0

    def passed(self, bad: bool, step: int, latest: str, log: Callable[[str], None]) -> bool:
        """False for a bad step (counted and logged; TrainingError after max_in_a_row in a row), True for a
        good one. latest: the last good checkpoint (or that there is none), for the message."""
        if not bad:
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        log(f"step {step}: non-finite loss on some rank; skipped ({self.in_a_row} in a row)")
        if self.in_a_row >= self.max_in_a_row:
            raise TrainingError(f"{self.in_a_row} non-finite losses in a row at step {step}; stopping. The last "
                                f"good checkpoint is {latest} (lower optimizer.lr, check the data)")
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"bad_steps": self.in_a_row, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.in_a_row, self.skipped = int(state["bad_steps"]), int(state["skipped"])
