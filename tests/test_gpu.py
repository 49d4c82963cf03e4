"""Checks that need a CUDA GPU (skipped without one; `pytest -m gpu`, run by tools/gpu_smoke.sh)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from vidgpt.attention import MAX_KERNEL_BATCH, attention, reference_attention
from vidgpt.diffusion import RectifiedFlow
from vidgpt.distributed import free_port
from vidgpt.kv_cache import TemporalKVCache
from vidgpt.sampling import generate, sampling_autocast

from conftest import tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_forward_and_cached_generation_never_sync_with_the_host() -> None:
    model = tiny_model(text=True).cuda()
    x = torch.randn(2, 4, 4, 8, 8, device="cuda")
    t = torch.rand(2, 4, device="cuda") * 999
    text = torch.randn(2, 5, 16, device="cuda")
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool, device="cuda")
    cache = TemporalKVCache(4)
    with torch.no_grad():
        model(x[:, :2], torch.zeros(2, 2, device="cuda"), text=text, text_mask=mask, cache=cache, write_cache=True)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(x, t, text=text, text_mask=mask)
            model(x[:, 2:], t[:, 2:], text=text, text_mask=mask, cache=cache)
            RectifiedFlow().step(x, x, 0.5, 0.25)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_attention_over_the_cuda_grid_batch_limit() -> None:
    """The temporal attention's batch B x S x CFG passes 65535 for large latents: split, not a crash."""
    B = MAX_KERNEL_BATCH + 1000
    q, k, v = (torch.randn(B, 4, 2, 16, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = attention(q, k, v, causal=True)
    want = reference_attention(q[-8:].float(), k[-8:].float(), v[-8:].float(), causal=True)
    torch.testing.assert_close(out[-8:].float(), want, atol=2e-2, rtol=2e-2)


def test_bf16_sampling_keeps_fp32_state_and_follows_fp32() -> None:
    model = tiny_model(text=False).cuda()
    prompt = torch.randn(2, 2, 4, 8, 8, device="cuda")
    kw = dict(chunk=2, window=4, steps=8, use_cache=True)
    ref = generate(model, RectifiedFlow(), prompt, 6, generator=torch.Generator("cuda").manual_seed(0), **kw)
    low = generate(model, RectifiedFlow(), prompt, 6, generator=torch.Generator("cuda").manual_seed(0),
                   autocast=sampling_autocast("auto", "cuda"), **kw)
    assert low.dtype == torch.float32 and (low - ref).abs().max() < 0.1 * ref.abs().max()


def test_nccl_collectives_take_cpu_tensors_and_the_device_follows_deepspeed() -> None:
    script = textwrap.dedent("""
        import torch
        from vidgpt import distributed
        env = distributed.detect_env()
        device, backend = distributed.accelerator_device(env.local_rank)
        assert device.type == "cuda" and backend == "nccl", (device, backend)
        distributed.init(env, backend)
        out = distributed.all_reduce(torch.tensor([1.5, 2.0]), "sum")   # a CPU tensor, through NCCL
        assert out.device.type == "cpu" and out.tolist() == [1.5, 2.0], out
        assert distributed.collective_device().type == "cuda"
        print("NCCL OK")
        distributed.shutdown()
    """)
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "3", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0")}
    env.pop("DS_ACCELERATOR", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "NCCL OK" in done.stdout, done.stderr[-3000:]
