"""Device, backend and collective helpers, and the trainer's pieces that decide what runs where."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vidgpt import distributed
from vidgpt.components.engine import deepspeed_config, resolve_precision
from vidgpt.components.loss_log import trim_losses
from vidgpt.config import load_config

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo_cpu.toml"


def test_device_ordinal_wraps_local_rank_over_the_visible_devices() -> None:
    # SLURM binding one GPU per task: every task sees device 0, whatever its local rank
    assert [distributed.device_ordinal(r, 1) for r in range(4)] == [0, 0, 0, 0]
    assert [distributed.device_ordinal(r, 4) for r in range(6)] == [0, 1, 2, 3, 0, 1]
    with pytest.raises(ValueError, match="no accelerator devices"):
        distributed.device_ordinal(0, 0)


def test_gpus_allocated_without_cuda_are_named() -> None:
    assert distributed.allocated_gpus_without_cuda({}, cuda_available=False) is None
    assert distributed.allocated_gpus_without_cuda({"SLURM_GPUS_ON_NODE": "8"}, cuda_available=True) is None
    assert distributed.allocated_gpus_without_cuda({"SLURM_GPUS_ON_NODE": "0"}, cuda_available=False) is None
    asked_cpu = {"SLURM_GPUS_ON_NODE": "8", "DS_ACCELERATOR": "cpu"}
    assert distributed.allocated_gpus_without_cuda(asked_cpu, cuda_available=False) is None
    msg = distributed.allocated_gpus_without_cuda({"SLURM_JOB_GPUS": "0,1"}, cuda_available=False)
    assert msg is not None and msg.startswith("SLURM_JOB_GPUS=0,1: this job was allocated GPUs")


def test_all_reduce_outside_a_group_returns_a_copy_on_the_callers_device() -> None:
    value = torch.tensor([1.5, 2.0])
    out = distributed.all_reduce(value, "max")
    assert torch.equal(out, value) and out.data_ptr() != value.data_ptr() and out.device == value.device
    assert distributed.all_reduce([1.0, 0.0], "mean").tolist() == [1.0, 0.0]
    assert distributed.collective_device() == torch.device("cpu")
    with pytest.raises(ValueError, match="op must be"):
        distributed.all_reduce([1.0], "min")


def test_bf16_accumulates_and_reduces_gradients_as_configured() -> None:
    cfg = load_config(DEMO)
    ds = deepspeed_config(cfg.training, cfg.optimizer, cfg.data.batch_size, "bf16", load_universal=False)
    assert ds["bf16"] == {"enabled": True} and ds["data_types"] == {"grad_accum_dtype": "fp32"}
    assert ds["communication_data_type"] == "fp32"
    cfg = load_config(DEMO, ["--training.grad_reduce_dtype=bf16"])
    bf16 = deepspeed_config(cfg.training, cfg.optimizer, cfg.data.batch_size, "bf16", load_universal=False)
    assert bf16["communication_data_type"] == "bf16"
    fp32 = deepspeed_config(cfg.training, cfg.optimizer, cfg.data.batch_size, "fp32", load_universal=False)
    assert "data_types" not in fp32 and "communication_data_type" not in fp32


def test_precision_auto_is_fp32_on_the_cpu() -> None:
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_trim_losses_drops_steps_after_the_checkpoint_and_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "losses.jsonl"
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 8, "lo')
    trim_losses(path, 5)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:5]
    trim_losses(tmp_path / "absent.jsonl", 3)  # nothing to trim
    assert not (tmp_path / "absent.jsonl").exists()
