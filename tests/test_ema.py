"""The EMA follows the fp32 master weights under bf16 ZeRO-3 (DeepSpeed's CPU accelerator runs bf16)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from vidgpt.distributed import free_port

pytestmark = pytest.mark.distributed

SCRIPT = textwrap.dedent("""
    import torch, deepspeed
    from deepspeed.utils import safe_get_local_fp32_param
    from vidgpt.ema import ShardedEMA
    deepspeed.init_distributed("gloo", auto_mpi_discovery=False)
    cfg = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 3}, "bf16": {"enabled": True},
           "data_types": {"grad_accum_dtype": "fp32"}, "steps_per_print": 10**9}
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=cfg):
        net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 8))
    # lr so small that most updates are below one bf16 step of the weights: the bf16 copy stays put
    engine, *_ = deepspeed.initialize(model=net, optimizer=torch.optim.AdamW(net.parameters(), lr=1e-6), config=cfg)
    follow = ShardedEMA(engine.module, 0.0)   # decay 0: the EMA is whatever it averages
    slow = ShardedEMA(engine.module, 0.9)
    params = list(engine.module.parameters())
    start = [safe_get_local_fp32_param(p).clone() for p in params]
    expect = [s.clone() for s in start]
    for _ in range(5):
        x = torch.randn(4, 16).bfloat16()
        engine.backward(engine(x).float().pow(2).mean())
        engine.step()
        follow.update()
        slow.update()
        for e, p in zip(expect, params):
            e.mul_(0.9).add_(safe_get_local_fp32_param(p), alpha=0.1)
    masters = [safe_get_local_fp32_param(p) for p in params]
    bf16 = [p.ds_tensor.float() for p in params]
    assert all(torch.equal(e, m) for e, m in zip(follow.shards, masters)), "EMA(decay 0) != fp32 master"
    assert any(not torch.equal(m, b) for m, b in zip(masters, bf16)), "master and bf16 copy agree: test is void"
    assert any(not torch.equal(m, s) for m, s in zip(masters, start)), "training did not move the master"
    for e, s in zip(expect, slow.shards):
        torch.testing.assert_close(s, e, rtol=0, atol=1e-6)
    print("EMA OK")
""")


def test_ema_averages_the_fp32_master_not_the_bf16_copy() -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and "EMA OK" in done.stdout, done.stdout[-2000:] + done.stderr[-4000:]
