"""Unit tests of the trainer's components that need no DeepSpeed and no process group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vidgpt.components.loss_log import LossLog
from vidgpt.components.seeds import RandomStreams, Stream, derive_seed
from vidgpt.components.step_guard import NonFiniteGuard
from vidgpt.components.throughput import StepCost, Throughput
from vidgpt.errors import TrainingError


def test_every_stream_of_every_rank_has_its_own_seed() -> None:
    seeds = {derive_seed(7, rank, stream, step) for rank in range(64) for stream in Stream for step in (0, 100, 200)}
    assert len(seeds) == 64 * len(Stream) * 3
    # the one formula, as checkpoints of earlier runs were seeded
    assert derive_seed(0, 1, Stream.NOISE) == 7919 + 1 and derive_seed(2, 0, Stream.EVAL_PROMPT) == 2_000_006 + 4
    assert derive_seed(1, 3, Stream.PROMPT, step=10) == 1_000_003 + 3 * 7919 + 104_729 * 10 + 2


def test_random_streams_round_trip_through_their_state() -> None:
    a = RandomStreams.for_training(seed=3, rank=1, device=torch.device("cpu"))
    torch.rand(5, generator=a.noise)  # advance both
    torch.randint(10, (3,), generator=a.prompt)
    state = a.state_dict()
    b = RandomStreams.for_training(seed=99, rank=0, device=torch.device("cpu"))
    b.load_state_dict(state)
    assert torch.equal(torch.rand(4, generator=a.noise), torch.rand(4, generator=b.noise))
    assert torch.equal(torch.randint(9, (4,), generator=a.prompt), torch.randint(9, (4,), generator=b.prompt))
    # training, validation and a restart at a step draw different numbers
    first = [torch.rand(3, generator=s.noise) for s in (
        RandomStreams.for_training(3, 0, torch.device("cpu")), RandomStreams.for_validation(3, 0, torch.device("cpu")),
        RandomStreams.for_training(3, 0, torch.device("cpu"), step=50))]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])
    assert torch.equal(first[1], torch.rand(3, generator=RandomStreams.for_validation(3, 0, torch.device("cpu")).noise))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_throughput_and_mfu_from_known_step_times() -> None:
    clock = FakeClock()
    meter = Throughput(peak_flops=1e12, world=2, device=torch.device("cpu"), clock=clock)
    meter.restart()
    for _ in range(4):  # 4 steps of 0.5 s, each waiting 0.1 s for data
        meter.waited(0.1)
        clock.now += 0.5
        meter.step_done()
    meter.exclude(3.0)  # a validation of 3 s inside the window is not a step's time
    clock.now += 3.0
    got = meter.report(StepCost(samples=8, tokens=800, flops=4e11))
    assert got["step_time"] == pytest.approx(0.5)
    assert got["samples_per_s"] == pytest.approx(16.0) and got["tokens_per_s"] == pytest.approx(1600.0)
    assert got["data_wait_frac"] == pytest.approx(0.2)
    assert got["mfu"] == pytest.approx(4e11 / 0.5 / 2e12)  # 0.4 of two devices' peak
    assert got["memory_gb"] > 0
    clock.now += 2.0  # the next window starts where the report was made
    meter.step_done()
    assert meter.report(StepCost(8, 800, 4e11))["step_time"] == pytest.approx(2.0)
    unknown_peak = Throughput(0.0, 1, torch.device("cpu"), clock=clock)
    clock.now += 1.0
    unknown_peak.step_done()
    assert "mfu" not in unknown_peak.report(StepCost(8, 800, 4e11))  # no peak (a GPU without training.peak_tflops)


def test_loss_log_appends_and_trims_on_resume(tmp_path: Path) -> None:
    log = LossLog(tmp_path, is_main=True)
    for step in range(1, 6):
        log.add(step, torch.tensor(float(step)))
    assert log.flush() == [1.0, 2.0, 3.0, 4.0, 5.0] and log.flush() == []
    log.resumed_at(3)
    rows = [json.loads(line) for line in (tmp_path / "losses.jsonl").read_text().splitlines()]
    assert rows == [{"step": s, "loss": float(s)} for s in (1, 2, 3)]
    LossLog(tmp_path / "other", is_main=False).add(1, torch.tensor(1.0))  # other ranks write nothing
    assert not (tmp_path / "other").exists()


def test_non_finite_guard_skips_counts_and_stops_after_too_many_in_a_row() -> None:
    guard, lines = NonFiniteGuard(max_in_a_row=3), []
    assert guard.passed(False, 1, "L", lines.append)
    assert not guard.passed(True, 2, "L", lines.append) and not guard.passed(True, 2, "L", lines.append)
    assert guard.passed(False, 2, "L", lines.append)  # a good step resets the run of bad ones, not the total
    assert (guard.in_a_row, guard.skipped) == (0, 2) and lines[-1].endswith("skipped (2 in a row)")
    restored = NonFiniteGuard(3)
    restored.load_state_dict(guard.state_dict())
    assert (restored.in_a_row, restored.skipped) == (0, 2)
    guard.passed(True, 5, "L", lines.append)
    guard.passed(True, 5, "L", lines.append)
    with pytest.raises(TrainingError, match=r"3 non-finite losses in a row at step 5; .* checkpoint is ckpts/latest"):
        guard.passed(True, 5, "ckpts/latest", lines.append)
    assert guard.skipped == 5
