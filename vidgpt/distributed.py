"""Where this process sits in a job, from torchrun's or SLURM's variables, and small collectives.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. Under `srun` with one task
per GPU (or per CPU rank) SLURM sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID; the master address
is the first node of SLURM_JOB_NODELIST (or MASTER_ADDR if the launcher exported it) and the port
defaults to one derived from the job id. A plain `python -m vidgpt.train` is rank 0 of 1.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from data_pipeline.net import free_port

__all__ = ["DistEnv", "accelerator_device", "all_gather_objects", "all_reduce", "allocated_gpus_without_cuda",
           "barrier", "collective_device", "detect_env", "device_ordinal", "first_host", "free_port", "init"]


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # "torchrun", "slurm" or "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def first_host(nodelist: str) -> str:
    """'n[1-2,5],m3' -> 'n1'; 'node07' -> 'node07' (scontrol-free parse of SLURM's compressed list)."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def detect_env(environ: dict[str, str] | None = None) -> DistEnv:
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]), world=int(env["WORLD_SIZE"]), local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"), master_port=int(env.get("MASTER_PORT", 29500)),
            source="torchrun",
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
        port = int(env.get("MASTER_PORT", 20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        return DistEnv(
            rank=int(env["SLURM_PROCID"]), world=int(env["SLURM_NTASKS"]), local_rank=int(env.get("SLURM_LOCALID", 0)),
            master_addr=env.get("MASTER_ADDR") or first_host(nodelist), master_port=port, source="slurm",
        )
    return DistEnv(0, 1, 0, "127.0.0.1", int(env.get("MASTER_PORT", 0)) or free_port(), "single")


def init(env: DistEnv, backend: str, timeout_s: float = 600.0) -> None:
    """Start the default process group through DeepSpeed (which also sets its accelerator up). timeout_s:
    how long any collective may wait (a stalled or lost rank); NCCL's asynchronous error handling is set to
    abort the communicators and raise in the waiting call (2), so that the trainer can exit cleanly instead
    of the process being torn down, unless TORCH_NCCL_ASYNC_ERROR_HANDLING is set already."""
    import deepspeed

    os.environ.update(
        RANK=str(env.rank), WORLD_SIZE=str(env.world), LOCAL_RANK=str(env.local_rank),
        MASTER_ADDR=env.master_addr, MASTER_PORT=str(env.master_port),
    )
    if backend == "nccl":
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
    with _without_op_build_notices():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                                   timeout=datetime.timedelta(seconds=timeout_s))


@contextlib.contextmanager
def _without_op_build_notices() -> Iterator[None]:
    """DeepSpeed prints "DeepSpeed <op> built successfully" on stdout from every process when it loads its
    CPU communication op; everything else printed meanwhile goes through."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        kept = [line for line in buffer.getvalue().splitlines(keepends=True)
                if not (line.startswith("DeepSpeed ") and line.rstrip().endswith(" built successfully"))]
        sys.stdout.write("".join(kept))


def device_ordinal(local_rank: int, device_count: int) -> int:
    """The accelerator this rank drives: local_rank % device_count. Where SLURM binds one GPU per task
    every task sees a single device 0 whatever its local rank; under torchrun the two are equal."""
    if device_count < 1:
        raise ValueError(f"no accelerator devices visible (device_count={device_count})")
    return local_rank % device_count


def accelerator_device(local_rank: int) -> tuple[torch.device, str]:
    """This rank's compute device and its collectives' backend, both from DeepSpeed's accelerator
    (DS_ACCELERATOR, else DeepSpeed's detection), so the trainer and ZeRO-3 never disagree: with
    DS_ACCELERATOR=cpu a GPU host trains on its CPUs with gloo, as asked. Sets the current device."""
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    backend = acc.communication_backend_name()
    if acc.device_name() == "cpu":
        return torch.device("cpu"), backend
    index = device_ordinal(local_rank, acc.device_count())
    acc.set_device(index)
    return torch.device(acc.device_name(), index), backend


def allocated_gpus_without_cuda(environ: Mapping[str, str], cuda_available: bool) -> str | None:
    """The reason to stop when the job was given GPUs that torch cannot use (a CPU-only torch build, a
    broken driver), rather than train on the CPUs without a word; None when all is well or when
    DS_ACCELERATOR=cpu asks for the CPU."""
    if cuda_available or environ.get("DS_ACCELERATOR") == "cpu":
        return None
    for var in ("SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        value = environ.get(var, "").strip()
        if value and value not in ("0", "(null)"):
            return (f"{var}={value}: this job was allocated GPUs, but torch cannot use CUDA (torch "
                    f"{torch.__version__}, CUDA build {torch.version.cuda}); install a CUDA build of torch, "
                    "or set DS_ACCELERATOR=cpu to train on the CPUs on purpose")
    return None


def collective_device() -> torch.device:
    """Where the default process group's collectives need their tensors: the current CUDA device under
    NCCL (which accepts nothing else), the CPU otherwise or outside a process group."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(value: torch.Tensor | Sequence[float], op: str = "sum") -> torch.Tensor:
    """All-reduce a copy of value (sum, mean, max) across ranks; no-op outside a process group.

    The reduction runs on `collective_device()` whatever device value is on, and the result comes back
    on value's device (the CPU for a list of numbers), so no caller can hand NCCL a CPU tensor."""
    if op not in ("sum", "mean", "max"):
        raise ValueError(f"op must be 'sum', 'mean' or 'max', got {op!r}")
    tensor = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(list(value), dtype=torch.float64)
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return tensor.clone()
    out = tensor.to(collective_device(), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    if op == "mean":
        out /= dist.get_world_size()
    return out.to(tensor.device)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """End the default process group on a normal exit of every rank: a barrier, then
    `destroy_process_group`. Without it, gloo's worker threads outlive the interpreter and a rank that
    exits first can abort in its finalization (SIGABRT, "terminate called without an active exception":
    pytorch/pytorch#179291), which torchrun reports as a failed run. Call it only where every rank gets
    (after an error the others may be inside a collective, and the barrier would hang them); no-op
    outside a process group."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_gather_objects(obj: object) -> list[object]:
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
