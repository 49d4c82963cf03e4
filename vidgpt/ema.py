"""An exponential moving average of the weights, kept in the same shards as the parameters.

Under ZeRO-3 each rank holds a flat partition of every parameter (`p.ds_tensor`, ceil(numel / world)
elements, the last one padded); the EMA keeps exactly that partition in float32, so no rank ever holds
the whole model for it. Without ZeRO-3 partitions, the whole parameter is the "shard". A checkpoint
stores each rank's shards; `consolidate` joins the shards of all ranks into full tensors (for export,
or to re-partition for a different number of ranks).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def local_shard(p: nn.Parameter) -> torch.Tensor:
    return p.ds_tensor if hasattr(p, "ds_tensor") else p.data


def full_numel_and_shape(p: nn.Parameter) -> tuple[int, tuple[int, ...]]:
    if hasattr(p, "ds_numel"):
        return int(p.ds_numel), tuple(p.ds_shape)
    return p.numel(), tuple(p.shape)


class ShardedEMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.named = [(n, p) for n, p in model.named_parameters()]
        self.shards = [local_shard(p).detach().float().clone() for _, p in self.named]

    @torch.no_grad()
    def update(self) -> None:
        for shard, (_, p) in zip(self.shards, self.named):
            shard.mul_(self.decay).add_(local_shard(p).detach().float(), alpha=1.0 - self.decay)

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "names": [n for n, _ in self.named],
            "numels": [full_numel_and_shape(p)[0] for _, p in self.named],
            "shapes": [list(full_numel_and_shape(p)[1]) for _, p in self.named],
            "partitioned": [hasattr(p, "ds_tensor") for _, p in self.named],
            "shards": [s.clone() for s in self.shards],
        }

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
