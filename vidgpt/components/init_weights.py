"""Initial weights from a file (`[model] init_from`): fine-tuning an exported model (a bidirectional model
as a causal one, longer clips, new latent channels with `init_reinit`) instead of training from random
weights.

The file's keys and shapes are read from its safetensors header on every rank (no tensor is loaded) and
compared with the model's before anything is copied: missing, unexpected and shape-mismatched keys are
each said in one line, and any of them stops the run unless `init_reinit` names those parameters. Under
ZeRO-3 the tensors are copied one at a time: rank 0 reads one tensor and writes it into the parameter
gathered for that moment, which is then partitioned again, so no rank ever holds the whole model.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from vidgpt.errors import ConfigError

WEIGHTS = "model.safetensors"


def weights_file(init_from: str) -> Path:
    """The safetensors file `init_from` names: an export directory's model.safetensors, or the file."""
    path = Path(init_from).expanduser()
    if path.is_dir():
        path = path / WEIGHTS
        if not path.is_file():
            raise ConfigError(f"model.init_from: {init_from} has no {WEIGHTS} (an export directory of vidgpt-export, "
                              "or a .safetensors file)")
    elif not path.is_file():
        raise ConfigError(f"model.init_from: {init_from}: no such file or directory")
    return path


def _full_shape(p: nn.Parameter) -> tuple[int, ...]:
    """A parameter's whole shape (ZeRO-3 keeps only a partition; its full shape is ds_shape)."""
    return tuple(getattr(p, "ds_shape", p.shape))


def _reinit(name: str, reinit: list[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in reinit)


def check_init_weights(model: nn.Module, file: Path, reinit: list[str]) -> list[str]:
    """The names of the parameters to load from `file`; ConfigError with one line per kind of problem
    (missing, unexpected, shape mismatch) outside `reinit`."""
    try:
        with safe_open(str(file), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - not a safetensors file: one line
        raise ConfigError(f"model.init_from: {file}: not a readable safetensors file ({type(exc).__name__})") from exc
    params = {n: _full_shape(p) for n, p in model.named_parameters()}
    missing = [n for n in params if n not in shapes and not _reinit(n, reinit)]
    unexpected = [k for k in shapes if k not in params and not _reinit(k, reinit)]
    mismatched = [f"{n} {list(shapes[n])} in the file, {list(params[n])} in the model" for n in params
                  if n in shapes and shapes[n] != params[n] and not _reinit(n, reinit)]
    problems = []
    for what, names in (("missing from the file", missing), ("not in the model (unexpected)", unexpected),
                        ("shaped differently", mismatched)):
        if names:
            problems.append(f"model.init_from: {file}: {len(names)} parameter(s) {what}: {', '.join(names[:4])}"
                            + (f" and {len(names) - 4} more" if len(names) > 4 else ""))
    if problems:
        problems.append("name the parameters to keep freshly initialised in model.init_reinit (e.g. "
                        '["x_embedder"] when the latent channels change), or fix model.* to match the file')
        raise ConfigError("\n".join(problems))
    return [n for n in params if n in shapes and not _reinit(n, reinit)]


def load_init_weights(model: nn.Module, file: Path, names: list[str], *, reads: bool,
                      gather: Callable[[list[nn.Parameter]], AbstractContextManager[object]] | None = None) -> int:
    """Copy the tensors `names` of `file` into `model`'s parameters; returns how many. reads: whether this
    rank reads the file (under ZeRO-3 only the gathering's modifier rank, 0, does; every rank enters each
    gathering). gather(params): ZeRO-3's GatheredParameters(params, modifier_rank=0), or None."""
    wanted = set(names)
    with safe_open(str(file), framework="pt", device="cpu") if reads else nullcontext() as f:
        count = 0
        for name, p in model.named_parameters():
            if name not in wanted:
                continue
            with gather([p]) if gather is not None else nullcontext():
                if reads:
                    with torch.no_grad():
                        p.data.copy_(f.get_tensor(name).to(p.dtype))
            count += 1
    return count
