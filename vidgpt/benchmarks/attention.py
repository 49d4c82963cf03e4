"""Attention kernels on the temporal-attention shape (one JSON object).

    vidgpt-bench attention [--flavor xl] [--latent-size 32] [--batch 2] [--frames 8,16,33,64]

The temporal attention runs with batch B x S (every spatial token of every clip: 2 x 256 = 512 for
xl at 256 px) over a short sequence of T frames, causal. For each T this times forward + backward
of every kernel available here:
- `flash`: flash-attn's `flash_attn_func` (CUDA, fp16/bf16);
- `sdpa_flash`, `sdpa_efficient`, `sdpa_math`, `sdpa_cudnn`: PyTorch SDPA with one backend forced
  (`torch.nn.attention.sdpa_kernel`), where it accepts the inputs;
- `sdpa`: PyTorch's own choice;
- `bmm`: plain batched matmuls and a masked softmax (`vidgpt.attention.reference_attention`).
Each entry is the median of `--repeats` timed calls after a warm-up, with `fastest` per T and
`speedup_vs_default` (the project's default kernel, `vidgpt.attention.attention`, over the fastest).
FlashAttention pads T to its 128-row tiles (and head dim 72 to 96), so for T <= 64 most of a tile is
padding: this is where another kernel may win. The figures are of the machine it runs on.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from vidgpt import attention as attn
from vidgpt.model import FLAVORS

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _sdpa_forced(backend: object) -> Kernel:
    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  is_causal=True).transpose(1, 2)
    return run


def kernels(device: torch.device) -> dict[str, Kernel]:
    """Every kernel worth timing here, by name; all take (B, T, H, D) and are causal."""
    out: dict[str, Kernel] = {
        "default": lambda q, k, v: attn.attention(q, k, v, causal=True),
        "sdpa": lambda q, k, v: attn._sdpa(q, k, v, True, None),
        "bmm": lambda q, k, v: attn.reference_attention(q, k, v, causal=True),
        "sdpa_math": _sdpa_forced(SDPBackend.MATH),
    }
    if device.type == "cuda":
        out |= {"sdpa_flash": _sdpa_forced(SDPBackend.FLASH_ATTENTION),
                "sdpa_efficient": _sdpa_forced(SDPBackend.EFFICIENT_ATTENTION),
                "sdpa_cudnn": _sdpa_forced(SDPBackend.CUDNN_ATTENTION)}
        if attn.flash_supported(device):
            out["flash"] = lambda q, k, v: attn._flash_attn_func(q, k, v, causal=True)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_kernel(fn: Kernel, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, repeats: int) -> float | str:
    """Median seconds of forward + backward, or the first line of the error when the kernel refuses."""
    try:
        for _ in range(2):  # warm-up
            fn(q, k, v).sum().backward()
        times = []
        for _ in range(repeats):
            _sync(q.device)
            start = time.perf_counter()
            fn(q, k, v).sum().backward()
            _sync(q.device)
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    except (RuntimeError, ValueError) as exc:
        return f"unavailable: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}"


def run(args: argparse.Namespace) -> dict[str, object]:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    cfg = FLAVORS[args.flavor]
    tokens = (args.latent_size // cfg.patch) ** 2
    batch = args.batch * tokens  # the temporal attention's batch: B x S
    table = kernels(device)
    rows = []
    for T in args.frame_list:
        g = torch.Generator().manual_seed(T)
        shape = (batch, T, cfg.heads, cfg.head_dim)
        q, k, v = (torch.randn(shape, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
        timed = {name: time_kernel(fn, q, k, v, args.repeats) for name, fn in table.items()}
        ok = {n: t for n, t in timed.items() if isinstance(t, float) and n != "default"}
        fastest = min(ok, key=ok.get) if ok else None
        rows.append({
            "frames": T, "shape": list(shape),
            "seconds": {n: (round(t, 6) if isinstance(t, float) else t) for n, t in timed.items()},
            "fastest": fastest,
            "speedup_vs_default": (round(timed["default"] / ok[fastest], 4)
                                   if fastest and isinstance(timed["default"], float) else None),
        })
    return {
        "benchmark": "attention", "flavor": args.flavor, "heads": cfg.heads, "head_dim": cfg.head_dim,
        "latent_size": args.latent_size, "batch": args.batch, "temporal_batch": batch, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": args.dtype, "default_kernel": attn.describe(device), "threads": torch.get_num_threads(),
        "repeats": args.repeats, "by_frames": rows, "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vidgpt-bench attention", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    ap.add_argument("--flavor", choices=sorted(FLAVORS), default="xl" if cuda else "small",
                    help="heads and head dim of this model (default: xl on a GPU, small on a CPU)")
    ap.add_argument("--latent-size", type=int, default=32 if cuda else 8,
                    help="latent height = width: spatial tokens = (size / patch)^2 (default: 32 on a GPU, 8 on a CPU)")
    ap.add_argument("--batch", type=int, default=2, help="clips (default: 2)")
    ap.add_argument("--frames", default="8,16,33,64", help="sequence lengths T, comma-separated (default: 8,16,33,64)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per kernel (default: 5)")
    ap.add_argument("--device", default="cuda" if cuda else "cpu", help="torch device")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="bfloat16" if cuda else "float32",
                    help="dtype (default: bfloat16 on a GPU, float32 on a CPU)")
    args = ap.parse_args(argv)
    try:
        args.frame_list = [int(x) for x in args.frames.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--frames must be comma-separated integers, got {args.frames!r}")
    if not args.frame_list or min(args.frame_list) < 1:
        ap.error(f"--frames must list lengths >= 1, got {args.frames!r}")
    for name in ("latent_size", "batch", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    json.dump(run(args), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
