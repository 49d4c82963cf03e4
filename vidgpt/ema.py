"""An exponential moving average of the weights, kept in the same shards as the parameters.

It averages the optimizer's float32 master weights, not the bf16 copy the network computes with: late in
training an update smaller than one bf16 step changes the master but not the bf16 copy, and would never
reach the EMA. Under ZeRO-3 that master is `deepspeed.utils.safe_get_local_fp32_param(p)` (the same
partition as `p.ds_tensor`); without ZeRO-3 partitions the parameter itself is the master, which is
float32 in fp32 training (under ZeRO stage 1/2 with bf16 the EMA would average the bf16 weights).
One `torch._foreach_lerp_` updates every shard.

Under ZeRO-3 each rank holds a flat partition of every parameter (`p.ds_tensor`, ceil(numel / world)
elements, the last one padded); the EMA keeps exactly that partition in float32, so no rank ever holds
the whole model for it. Without ZeRO-3 partitions, the whole parameter is the "shard". A checkpoint
stores each rank's shards; `consolidate` joins the shards of all ranks into full tensors (for export,
or to re-partition for a different number of ranks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def local_shard(p: nn.Parameter) -> torch.Tensor:
    return p.ds_tensor if hasattr(p, "ds_tensor") else p.data


def master_shard(p: nn.Parameter) -> torch.Tensor:
    """The float32 master of this rank's shard of p (the optimizer's, under ZeRO-3), else the shard."""
    if hasattr(p, "ds_id") and p.requires_grad:
        from deepspeed.utils import safe_get_local_fp32_param

        master = safe_get_local_fp32_param(p)
        if master is not None:
            return master
    return local_shard(p)


def full_numel_and_shape(p: nn.Parameter) -> tuple[int, tuple[int, ...]]:
    if hasattr(p, "ds_numel"):
        return int(p.ds_numel), tuple(p.ds_shape)
    return p.numel(), tuple(p.shape)


class ShardedEMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.named = [(n, p) for n, p in model.named_parameters()]
        self.shards = [master_shard(p).detach().float().clone().view(local_shard(p).shape) for _, p in self.named]

    @torch.no_grad()
    def update(self) -> None:
        """shard += (1 - decay) * (master - shard) for every shard at once. The masters are looked up each
        time (cheap views), since DeepSpeed may move or reload its flat buffers."""
        masters = [master_shard(p).detach().float().view(s.shape) for s, (_, p) in zip(self.shards, self.named)]
        torch._foreach_lerp_(self.shards, masters, 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block the model computes with the EMA weights; after it, with exactly the tensors
        it had before. Every rank must enter it together: under ZeRO-3 each rank writes its own EMA
        partitions into the parameters' partitions (`ds_tensor`) and releases the gathered copies of
        persistent parameters, so the next forward gathers from the swapped partitions; nothing is
        gathered here, and no rank ever holds the whole model."""
        saved = [local_shard(p).detach().clone() for _, p in self.named]
        self._write([s.view(local_shard(p).shape) for s, (_, p) in zip(self.shards, self.named)])
        try:
            yield
        finally:
            self._write(saved)

    @torch.no_grad()
    def _write(self, values: list[torch.Tensor]) -> None:
        for value, (_, p) in zip(values, self.named):
            local_shard(p).copy_(value)
        gathered = [p for _, p in self.named if hasattr(p, "ds_tensor") and getattr(p, "ds_status", None) is not None
                    and p.ds_status.name == "AVAILABLE"]  # persistent (small) parameters stay gathered
        if gathered:
            gathered[0].partition(param_list=gathered, has_been_updated=False)

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "names": [n for n, _ in self.named],
            "numels": [full_numel_and_shape(p)[0] for _, p in self.named],
            "shapes": [list(full_numel_and_shape(p)[1]) for _, p in self.named],
            "partitioned": [hasattr(p, "ds_tensor") for _, p in self.named],
            "shards": [s.clone() for s in self.shards],
        }

    def load_shards(self, state: dict[str, Any]) -> None:
        """Restore this rank's shards from its own saved state (a resume on the same number of ranks:
        nothing is consolidated)."""
        if state["names"] != [n for n, _ in self.named]:
            raise ValueError("EMA state is for different parameters than this model")
        shards = state["shards"]
        for i, (saved, shard) in enumerate(zip(shards, self.shards)):
            if tuple(saved.shape) != tuple(shard.shape):
                raise ValueError(f"EMA shard {state['names'][i]} is {tuple(saved.shape)}, this rank's is "
                                 f"{tuple(shard.shape)} (a checkpoint of another number of ranks?)")
        self.shards = [s.float().clone().to(own.device) for s, own in zip(shards, self.shards)]

    def load_state_dict(self, states: list[dict[str, Any]], rank: int) -> None:
        """Restore from the states of every rank of the saving run (same or different number of ranks)."""
        names = [n for n, _ in self.named]
        if states[0]["names"] != names:
            raise ValueError("EMA state is for different parameters than this model")
        full = consolidate(states)
        for i, (name, p) in enumerate(self.named):
            flat = full[name].flatten().float()
            local = local_shard(p)
            if hasattr(p, "ds_tensor"):
                size = local.numel()
                padded = torch.zeros(max(size * (rank + 1), flat.numel()))
                padded[: flat.numel()] = flat
                self.shards[i] = padded[rank * size : (rank + 1) * size].clone().to(local.device)
            else:
                self.shards[i] = flat.view(local.shape).clone().to(local.device)


def consolidate(states: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Full float32 tensors {name: tensor} from the EMA states of all ranks (in rank order)."""
    out: dict[str, torch.Tensor] = {}
    first = states[0]
    for i, name in enumerate(first["names"]):
        numel, shape = first["numels"][i], tuple(first["shapes"][i])
        if first["partitioned"][i]:
            flat = torch.cat([s["shards"][i].flatten().cpu() for s in states])[:numel]
        else:
            flat = first["shards"][i].flatten().cpu()
        out[name] = flat.view(shape).clone()
    return out
