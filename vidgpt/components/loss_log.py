"""RUN/losses.jsonl: one line {"step": N, "loss": L} per optimizer step, the loss averaged over ranks;
kept across resumes (a resumed run first drops the lines of steps it trains again)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from vidgpt import distributed


def trim_losses(path: Path, step: int) -> None:
    """Drop the lines of steps after `step` from losses.jsonl (a run that crashed after its last
    checkpoint logged steps the resumed run trains again), atomically; a torn last line goes too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


class LossLog:
    """Per-step losses kept on the device until `flush` (one collective and one host sync per flush)."""

    def __init__(self, run_dir: Path, is_main: bool) -> None:
        self.path = run_dir / "losses.jsonl"
        self.is_main = is_main
        self.pending: list[tuple[int, torch.Tensor]] = []  # (step, loss on the device)

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.pending.append((step, loss))

    def flush(self) -> list[float]:
        """Average the buffered losses over ranks, append them to losses.jsonl on rank 0, return them."""
        if not self.pending:
            return []
        steps = [s for s, _ in self.pending]
        means = distributed.all_reduce(torch.stack([v for _, v in self.pending]), "mean").tolist()
        self.pending = []
        if self.is_main:
            with open(self.path, "a") as f:
                f.writelines(json.dumps({"step": s, "loss": v}) + "\n" for s, v in zip(steps, means))
        return means

    def resumed_at(self, step: int) -> None:
        """A run resumed at `step`: the lines of later steps go (rank 0 writes)."""
        if self.is_main:
            trim_losses(self.path, step)
