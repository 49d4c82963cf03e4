"""Training throughput, MFU and ZeRO-3 memory per rank, at 1 and 2 ranks (one JSON object).

    vidgpt-bench train [--flavor small] [--steps 4]

Writes a random latent dataset, then runs the real trainer set-up (DeepSpeed ZeRO-3, gloo on CPU) in
1 and in 2 processes and times optimizer steps after a warm-up. Reports, from the 1-rank run, step
time, tokens/s and `mfu`: model FLOPs (3 x the analytic forward) per second over the CPU's peak,
measured in the same run by a large float32 matmul on the same threads. From both runs it reports the
bytes of parameters plus optimizer state each rank holds (fp32 partitions, Adam moments) and
`zero3_shard_ratio` = bytes per rank at 2 ranks / at 1 rank (ideal 0.5).
Goals: mfu >= 0.3 for `small`; zero3_shard_ratio <= 0.55. `--compile` adds a 1-rank run with
training.compile (torch.compile per block; the warm-up steps absorb the compilation):
`compiled_step_s` and `compile_speedup` (eager step time / compiled).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipeline.index import write_index
from data_pipeline.shards import Sample, ShardBuilder
from vidgpt import distributed
from vidgpt.components.throughput import measured_cpu_peak_flops
from vidgpt.config import load_config
from vidgpt.model import FLAVORS, model_stats
from vidgpt.trainer import Trainer


def write_dataset(root: Path, samples: int, frames: int, channels: int, size: int) -> None:
    rng = np.random.default_rng(0)
    builder = ShardBuilder(root / "shards" / "bench.tar", "shards/bench.tar")
    for i in range(samples):
        lat = rng.standard_normal((frames, channels, size, size), dtype=np.float32).astype(np.float16)
        builder.add(Sample(f"b{i}", lat, {"source": "bench"}))
    write_index(str(root), [builder.close().to_json()], {"codec": {"name": "identity"}, "size": [size, size]})


def tensor_bytes(tensors: list[torch.Tensor]) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor) or t.numel() == 0:
            continue
        key = t.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def held_bytes(engine: Any) -> int:
    """Bytes of parameter partitions, fp32 master partitions and optimizer state on this rank."""
    tensors: list[torch.Tensor] = []
    for p in engine.module.parameters():
        tensors.append(p.ds_tensor if hasattr(p, "ds_tensor") else p.data)
    opt = engine.optimizer
    tensors += list(getattr(opt, "fp32_partitioned_groups_flat", []) or [])
    inner = getattr(opt, "optimizer", opt)
    for state in inner.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return tensor_bytes(tensors)


def worker(args: argparse.Namespace) -> None:
    """One rank: the trainer's own set-up, then timed steps; rank 0 writes the result file."""
    overrides = [
        f"--run_dir={args.work}/run{args.world}", f"--data.path={args.work}/data", f"--model.flavor={args.flavor}",
        f"--model.in_channels={args.channels}", "--model.text_dim=0", f"--data.num_frames={args.frames}",
        f"--data.batch_size={args.batch_size}", "--training.ema_decay=0", "--optimizer.grad_accum=1",
        f"--training.steps={args.steps + args.warmup}", f"--training.compile={'true' if args.compile else 'false'}",
    ]
    cfg = load_config(None, overrides)
    trainer = Trainer(cfg, None)
    trainer.setup()
    peak = measured_cpu_peak_flops()  # on the same threads, before the training steps
    data = trainer.batches()
    times = []
    for i in range(args.warmup + args.steps):
        batch = next(data)
        torch.distributed.barrier()
        start = time.perf_counter()
        trainer.micro_step(batch)
        torch.distributed.barrier()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    held = held_bytes(trainer.engine)
    all_held = [torch.zeros(1, dtype=torch.int64) for _ in range(args.world)]
    torch.distributed.all_gather(all_held, torch.tensor([held], dtype=torch.int64))
    if trainer.env.is_main:
        step = float(np.median(times))
        samples = args.batch_size * args.world
        flops = 3 * model_stats(trainer.cfg.model, args.frames, args.size, args.size, batch=samples).flops
        tokens = samples * args.frames * (args.size // trainer.cfg.model.patch) ** 2
        Path(args.result).write_text(json.dumps({
            "world": args.world, "step_s": step, "tokens_per_s": tokens / step, "model_flops_per_step": flops,
            "peak_flops_per_s": peak, "mfu": flops / step / (peak * args.world),
            "held_bytes_per_rank": [int(h) for h in all_held],
        }))
    trainer.close()
    distributed.shutdown()


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="vidgpt-bench-train-"))
    try:
        write_dataset(work / "data", 64, args.frames, args.channels, args.size)
        results = {}
        for world, compiled in ((1, False), (2, False), *(((1, True),) if args.compile else ())):
            port = str(29_000 + os.getpid() % 1000 + world + 2 * compiled)
            result = work / f"result{world}{'c' if compiled else ''}.json"
            procs = []
            for rank in range(world):
                env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "DS_ACCELERATOR": "cpu",
                       "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // world))}
                cmd = [sys.executable, "-m", "vidgpt.benchmarks.train", "--worker", "--work", str(work),
                       "--world", str(world), "--result", str(result), "--flavor", args.flavor,
                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--frames", str(args.frames),
                       "--size", str(args.size), "--channels", str(args.channels), "--batch-size", str(args.batch_size),
                       *(["--compile"] if compiled else [])]
                procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            errors = [p.communicate()[1].decode(errors="replace") for p in procs]
            if any(p.returncode for p in procs):
                raise RuntimeError(f"benchmark worker failed at {world} rank(s):\n{errors[0][-3000:]}")
            results[(world, compiled)] = json.loads(result.read_text())
        one, two = results[(1, False)], results[(2, False)]
        extra = {}
        if args.compile:
            c = results[(1, True)]
            extra = {"compiled_step_s": round(c["step_s"], 4), "compile_speedup": round(one["step_s"] / c["step_s"], 4)}
        ratio = max(two["held_bytes_per_rank"]) / one["held_bytes_per_rank"][0]
        cfg = FLAVORS[args.flavor]
        return {
            "benchmark": "train",
            "flavor": args.flavor, "params": model_stats(cfg, 1, args.size, args.size).params,
            "clip": [args.frames, args.channels, args.size, args.size], "batch_per_rank": args.batch_size,
            "threads": torch.get_num_threads(),
            "step_s": round(one["step_s"], 4), "tokens_per_s": round(one["tokens_per_s"], 1),
            "mfu": round(one["mfu"], 4), "cpu_peak_gflops": round(one["peak_flops_per_s"] / 1e9, 1),
            "model_gflop_per_step": round(one["model_flops_per_step"] / 1e9, 2),
            "two_rank_step_s": round(two["step_s"], 4), "two_rank_tokens_per_s": round(two["tokens_per_s"], 1),
            "zero3_bytes_per_rank_1": one["held_bytes_per_rank"][0],
            "zero3_bytes_per_rank_2": two["held_bytes_per_rank"],
            "zero3_shard_ratio": round(ratio, 4),
            "goal_mfu": one["mfu"] >= 0.3, "goal_shard_ratio": ratio <= 0.55, **extra,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vidgpt-bench train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flavor", choices=sorted(FLAVORS), default="small", help="model size (default: small)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps (default: 4)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    ap.add_argument("--frames", type=int, default=8, help="frames per clip (default: 8)")
    ap.add_argument("--size", type=int, default=16, help="latent height = width (default: 16)")
    ap.add_argument("--channels", type=int, default=4, help="latent channels (default: 4)")
    ap.add_argument("--batch-size", type=int, default=2, help="clips per rank (default: 2)")
    ap.add_argument("--compile", action="store_true", help="also time a 1-rank run with torch.compile'd blocks")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--world", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    json.dump(run(args), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
