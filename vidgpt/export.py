"""Export a sharded checkpoint to one safetensors file plus config.json (what the sampler loads).

    vidgpt-export runs/demo_cpu/checkpoints/step_0000300 exported/ [--weights ema|model]

`model` weights are consolidated from the ZeRO shards by DeepSpeed's own routine
(`get_fp32_state_dict_from_zero_checkpoint`); `ema` weights are joined from every rank's EMA shard.
Runs on one CPU process, whatever number of ranks wrote the checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from data_pipeline.cli_types import finite_float
from data_pipeline.index import DatasetIndexError, read_json
from data_pipeline.storage import StorageError, join
from vidgpt.checkpoint import Checkpointer, CheckpointError, StepCheckpoint, find_checkpoint
from vidgpt.diffusion import Diffusion, DiffusionConfig, build_diffusion
from vidgpt.ema import consolidate
from vidgpt.model import ModelConfig, VidGPT
from vidgpt.sampling import SamplingSpec

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def consolidated_state(found: StepCheckpoint, weights: str) -> dict[str, torch.Tensor]:
    if weights == "ema":
        if not found.meta.get("ema"):
            raise CheckpointError(f"{found.path} has no EMA weights (training.ema_decay was 0); use --weights model")
        return consolidate([s["ema"] for s in Checkpointer.load_trainer_states(found)])
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(found.path.parent), tag=found.tag)
    return {k: v.float().contiguous() for k, v in state.items()}


def export(found: StepCheckpoint, out_dir: Path, weights: str = "ema") -> Path:
    cfg = ModelConfig(**found.meta["model"])
    state = consolidated_state(found, weights)
    expected = {n for n, _ in VidGPT(cfg, init_weights=False).named_parameters()}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise CheckpointError(f"{found.path}: weights do not match the model (missing {missing[:3]}, extra {extra[:3]})")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_dir / WEIGHTS))
    run_config = found.meta.get("config", {})
    data = run_config.get("data", {})
    info = {"model": found.meta["model"], "weights": weights, "step": found.meta["step"], "source": str(found.path),
            "data": data, "diffusion": run_config.get("diffusion", {}), "objective": run_config.get("objective", {}),
            "sampling": sampling_info(data),
            "eval": {"sampling": run_config.get("eval", {}).get("sampling", {})}}  # how to sample: exported_sampling
    (out_dir / CONFIG).write_text(json.dumps(info, indent=1) + "\n")
    return out_dir / WEIGHTS


def save_derived_export(model: VidGPT, source: Path, out_dir: Path) -> Path:
    """Write `model`'s weights as an export at out_dir with the config of the export at `source` (weights trained
    further from that export, which keep its model, data and sampling settings); returns the weights' path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / CONFIG, out_dir / CONFIG)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / WEIGHTS))
    return out_dir / WEIGHTS


def sampling_info(data: dict[str, Any]) -> dict[str, Any]:
    """What sampling from the user's own files needs, from the training dataset's index.json: the
    codec (with its VAE location and latent scale), the text encoder's location, frame size (and the
    aspect-ratio buckets of a bucketed dataset) and fps,
    and the training clip length (the default window). Empty fields when the index cannot be read."""
    out: dict[str, Any] = {"clip_len": data.get("num_frames"), "codec": None, "size": None, "fps": None,
                           "text_encoder": None}
    if not data.get("path"):
        return out
    try:
        index = read_json(join(data["path"], "index.json"))
    except (StorageError, DatasetIndexError, OSError, ValueError):
        return out
    out.update(codec=index.get("codec"), size=index.get("size"), fps=index.get("fps"),
               text_encoder=(index.get("text_encoder") or {}).get("path"))
    if index.get("buckets"):
        out["buckets"] = index["buckets"]
    return out


def exported_sampling(info: dict[str, Any]) -> SamplingSpec:
    """How the run said its model is sampled: its config.json's [eval.sampling] (the trainer's samples use
    it too), keys it lacks at today's defaults. vidgpt-sample's and vidgpt-eval's flags start from it."""
    section = (info.get("eval") or {}).get("sampling") or {}
    known = {f.name for f in dataclasses.fields(SamplingSpec)}
    try:
        return SamplingSpec(**{k: v for k, v in section.items() if k in known})
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"export config.json: bad eval.sampling section ({exc})") from exc


def exported_diffusion(info: dict[str, Any], eta: float | None = None) -> Diffusion:
    """The diffusion process an export was trained with (its config.json "diffusion" section, as the
    run config wrote it; keys it lacks take today's defaults). eta: the sampler's stochasticity instead of
    the export's `ddim_eta` (a one-line ValueError naming --eta when the process does not take it)."""
    section = info.get("diffusion", {})
    known = {f.name for f in dataclasses.fields(DiffusionConfig)}
    try:
        cfg = DiffusionConfig(**{k: v for k, v in section.items() if k in known})
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"export config.json: bad diffusion section ({exc})") from exc
    if eta is not None:
        try:
            cfg = dataclasses.replace(cfg, ddim_eta=eta)
        except ValueError as exc:
            raise ValueError(f"--eta {eta:g}: {exc} (the export's process is {cfg.process})") from None
    return build_diffusion(cfg)


def add_eta_option(ap: argparse.ArgumentParser) -> None:
    """--eta: the sampler's stochasticity, overriding the export's [diffusion] ddim_eta (`exported_diffusion`)."""
    ap.add_argument("--eta", type=finite_float, default=None,
                    help="sampling stochasticity: 0 deterministic; flow: the share of fresh noise in each step's "
                    "re-noising, at most 1 (shapes tend to shrink over long rollouts at 1 and to swell at 0); "
                    "ddpm: DDIM's eta (default: the export's [diffusion] ddim_eta)")


def without_prompt_frames(info: dict[str, Any], model: str) -> str | None:
    """None when the export was trained with some 0-frame prompts (objective.prompt_rule 'uniform',
    prompt_min_len 0): it can generate a chunk with no earlier frame, which text to video and context
    guidance need; otherwise the reason it cannot, naming `model`."""
    section = info.get("objective") or info.get("diffusion") or {}  # exports before [objective]: [diffusion]
    rule, min_len = section.get("prompt_rule", "uniform"), section.get("prompt_min_len", 1)
    if rule == "uniform" and min_len == 0:
        return None
    return (f"{model} was trained with {rule!r} prompts of at least {1 if rule != 'uniform' else min_len} frame(s), "
            f"never without earlier frames (that needs objective.prompt_rule = 'uniform', prompt_min_len = 0)")


def sampling_refusal(sampling: SamplingSpec, info: dict[str, Any], model: str) -> str | None:
    """The one-line refusal of sampling settings the export never learned: `--context-scale` other than 1
    for a model never trained without earlier frames, `--chunk` above 1 for a teacher-forced model (its noisy
    frames never saw each other); None when the settings fit."""
    scale = sampling.context_scale
    if scale != 1.0 and (reason := without_prompt_frames(info, model)):
        return f"--context-scale {scale:g} needs a model trained with 0-frame prompts; {reason}"
    if sampling.chunk not in (None, 1) and (info.get("objective") or {}).get("teacher_forcing"):
        return (f"--chunk {sampling.chunk}: {model} was trained with objective.teacher_forcing, one noisy frame at a "
                f"time; sample it frame by frame (--chunk 1)")
    return None


def load_exported(path: Path, device: str | torch.device = "cpu") -> tuple[VidGPT, dict[str, Any]]:
    """The model (eval mode) and config.json of an exported directory."""
    info = json.loads((path / CONFIG).read_text())
    model = VidGPT(ModelConfig(**info["model"]), init_weights=False)
    state = load_file(str(path / WEIGHTS), device=str(device))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vidgpt-export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a checkpoint step directory, a checkpoints/ directory, or a run directory")
    ap.add_argument("out", help="output directory for model.safetensors and config.json")
    ap.add_argument("--weights", choices=("ema", "model"), default="ema", help="EMA or raw weights (default: ema)")
    args = ap.parse_args(argv)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        print(f"vidgpt-export: error: {args.out} is a file; give a directory for model.safetensors and config.json",
              file=sys.stderr)
        return 1
    try:
        found = find_checkpoint(Path(args.checkpoint), args.weights)  # only the files this export reads
        if args.weights == "ema" and not found.meta.get("ema"):
            print("vidgpt-export: no EMA in this checkpoint; exporting the model weights", file=sys.stderr)
            args.weights = "model"
            found = find_checkpoint(Path(args.checkpoint), args.weights)
        out = export(found, Path(args.out), args.weights)
    except CheckpointError as exc:
        print(f"vidgpt-export: error: {exc}", file=sys.stderr)
        return 1
    print(f"exported {args.weights} weights of {found.path} (step {found.meta['step']}) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
