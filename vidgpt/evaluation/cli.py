"""vidgpt-eval: measure generated long video against ground truth (Step-metrics per chunk, object
metrics on the built-in scenes, and the copy-last-prompt-frame baseline beside every figure).

    vidgpt-eval runs/demo_cpu/export --out runs/demo_cpu/eval            # synthetic held-out scenes
    vidgpt-eval exported/ --data s3://bucket/val_latents --i3d i3d_torchscript.pt

Held-out clips are continued from their first P prompt frames for k times the training clip length
L (k*L generated frames), then compared with the true continuation:
- ground truth: the built-in synthetic scenes of a seed not used in training (deterministic physics,
  so rendering more frames gives the true continuation), passed through the same mp4 round trip as
  the training videos; or (--data) clips of a latent dataset long enough for P + k*L frames, decoded
  with the dataset's codec;
- per frame: MSE and PSNR; on synthetic scenes also colour-presence F1, centroid error, the garbage
  fraction (pixels near no scene colour; the truth's own is the floor) and the largest connected
  part per colour;
- per chunk of L generated frames (Step-metrics, like the paper's Step-FVD): the frame metrics and
  Fréchet distances to the truth's same chunk (`frechet_pixstat`, built in, NOT FVD; with --i3d,
  `fvd_i3d`, FVD);
- summary: every figure over the first m*L generated frames for m = 1..k, and the goal figures:
  presence F1 and garbage over the whole continuation, centroid error over the first clip length
  against copy_last's.
The copy_last baseline repeats the last prompt frame: a model must beat it on motion (centroid error)
while matching it on appearance (presence F1, garbage).

Writes report.json (see vidgpt.evaluation.report), metrics.png (per-frame curves) and sheet.png (truth
and generated frames) into --out.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipeline.cli_types import finite_float
from data_pipeline.codecs import Codec
from data_pipeline.index import DatasetIndexError
from data_pipeline.loader import DataError
from data_pipeline.storage import StorageError
from data_pipeline.synthetic import Scene, SyntheticTask
from vidgpt import metrics
from vidgpt.checkpoint import CheckpointError
from vidgpt.cli import OneLineParser, add_dataclass_options, dataclass_from_options
from vidgpt.evaluation.generation import continue_videos, pad_text
from vidgpt.evaluation.measure import evaluate_videos
from vidgpt.evaluation.pipeline import write_outputs
from vidgpt.evaluation.report import Source, format_summary
from vidgpt.evaluation.spec import EvalSpec
from vidgpt.evaluation.truth import dataset_truth, synthetic_truth
from vidgpt.export import (
    CONFIG,
    WEIGHTS,
    add_eta_option,
    exported_diffusion,
    exported_sampling,
    load_exported,
    sampling_refusal,
)
from vidgpt.latent_space import codec_for_export, dataset_codec, text_encoder_for, training_index
from vidgpt.model import ModelConfig, VidGPT
from vidgpt.sampling import SamplingSpec, sampling_autocast


def _parser() -> OneLineParser:
    ap = OneLineParser(prog="vidgpt-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export", type=Path, help="directory written by vidgpt-export (model.safetensors, config.json)")
    ap.add_argument("--out", type=Path, default=Path("eval"), help="output directory (default: eval)")
    ap.add_argument("--multiples", type=int, default=4,
                    help="generate k times the training clip length after the prompt (default: 4)")
    ap.add_argument("--clips", type=int, default=8, help="held-out clips (default: 8)")
    ap.add_argument("--clip-len", type=int, default=None,
                    help="training clip length L (default: data.num_frames of the export's config.json)")
    source = ap.add_mutually_exclusive_group()
    source.add_argument("--synthetic-seed", type=int, default=None,
                        help="seed of the held-out synthetic scenes (default: 1000; training uses 0)")
    source.add_argument("--data", help="a latent dataset to take held-out clips from instead (no object metrics)")
    ap.add_argument("--size", type=int, default=None,
                    help="synthetic frame size (default: the training dataset's, else 32)")
    ap.add_argument("--tolerance", type=finite_float, default=metrics.DEFAULT_TOLERANCE,
                    help=f"RGB distance for a pixel to match a scene colour (default: {metrics.DEFAULT_TOLERANCE:g})")
    ap.add_argument("--blend-tolerance", type=finite_float, default=metrics.DEFAULT_BLEND_TOLERANCE,
                    help="RGB distance for a pixel to count as a blend of the background and a scene colour (an "
                    f"anti-aliased edge), not garbage; 0: no blends (default: {metrics.DEFAULT_BLEND_TOLERANCE:g})")
    ap.add_argument("--text-encoder", help="T5 directory to embed the synthetic captions with "
                    "(default: the training dataset's, when it exists here; else unconditional)")
    ap.add_argument("--vae", help="sd-vae models: the VAE to decode with (default: the one in the dataset index)")
    ap.add_argument("--i3d", type=Path, help="a TorchScript I3D (StyleGAN-V's i3d_torchscript.pt) for fvd_i3d")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sampling noise and clip order (default: 0)")
    add_dataclass_options(ap, SamplingSpec, inherited="the export's [eval.sampling]")
    add_eta_option(ap)
    add_dataclass_options(ap, SyntheticTask, inherited="the training dataset's (its index.json)")
    return ap


def _check_paths(args: argparse.Namespace) -> None:
    if not (args.export / CONFIG).is_file() or not (args.export / WEIGHTS).is_file():
        raise ValueError(f"{args.export}: not an export directory (needs {WEIGHTS} and {CONFIG}; write one with "
                         "vidgpt-export)")
    if args.i3d is not None and not args.i3d.is_file():
        raise ValueError(f"--i3d {args.i3d}: no such file")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: is a file; give a directory (created if missing)")
    if args.text_encoder is not None and not Path(args.text_encoder).is_dir():
        raise ValueError(f"--text-encoder {args.text_encoder}: no such directory")


def _load_i3d(path: Path, device: str) -> torch.jit.ScriptModule:
    """The TorchScript I3D of --i3d; ValueError in one line for a file that is not TorchScript."""
    try:
        return torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError as exc:
        raise ValueError(f"--i3d {path}: not a TorchScript model (torch.jit.load: {str(exc).splitlines()[0][:120]}); "
                         "pass StyleGAN-V's i3d_torchscript.pt") from exc


def _load(export: Path, device: str) -> tuple[VidGPT, dict[str, Any]]:
    try:
        return load_exported(export, device)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{export}: cannot load the exported model: {reason}") from exc


def _spec(args: argparse.Namespace, sampling: SamplingSpec, info: dict[str, Any],
          index: dict[str, Any] | None) -> EvalSpec:
    """The spec of the flags; the clip length and the frame size default to the training run's."""
    if refusal := sampling_refusal(sampling, info, str(args.export)):
        raise ValueError(refusal)
    clip_len = args.clip_len or info.get("data", {}).get("num_frames")
    if not clip_len:
        raise ValueError(f"{args.export / CONFIG} names no data.num_frames (the training clip length); pass --clip-len")
    size = args.size or (index["size"][0] if index and index.get("size") else 32)
    try:
        sampling_autocast(sampling.precision, "cuda" if torch.cuda.is_available() else "cpu")
    except ValueError as exc:
        raise ValueError(f"--precision: {exc}") from exc
    task = dataclass_from_options(SyntheticTask, args, base=SyntheticTask.of_index(index or {}) or SyntheticTask())
    return EvalSpec(sampling=sampling, clip_len=clip_len, multiples=args.multiples, num_clips=args.clips,
                    synthetic_seed=1000 if args.synthetic_seed is None else args.synthetic_seed, size=size,
                    tolerance=args.tolerance, blend_tolerance=args.blend_tolerance, task=task)


@dataclass
class HeldOut:
    """The clips to continue, how their latents are decoded, and their captions."""

    truth: np.ndarray
    """uint8 (N, P + k*L, H, W, 3)."""
    scenes: list[Scene] | None
    """The synthetic scenes (object metrics), or None for dataset clips."""
    codec: Codec
    text: torch.Tensor | None
    text_mask: torch.Tensor | None
    conditioning: str
    """What the generation is conditioned on, in words."""


def _held_out_clips(spec: EvalSpec, model_cfg: ModelConfig, info: dict[str, Any], index: dict[str, Any] | None,
                   args: argparse.Namespace, device: str) -> HeldOut:
    """Dataset clips (--data, with their caption embeddings) or synthetic scenes (with their captions
    embedded by --text-encoder or the training dataset's encoder, when there is one)."""
    if args.data:
        codec = dataset_codec(args.data, vae=args.vae, model=info)
        clips = dataset_truth(args.data, spec, codec, seed=args.seed)
        if not (model_cfg.text_dim and clips.text is not None and clips.text_mask is not None):
            return HeldOut(clips.frames, None, codec, None, None, "unconditional")
        n = model_cfg.text_len
        return HeldOut(clips.frames, None, codec, clips.text[:, :n], clips.text_mask[:, :n], "dataset captions")
    codec = codec_for_export(info, model_cfg, vae=args.vae)
    multiple = model_cfg.patch * codec.downsample
    if spec.size % multiple:
        raise ValueError(f"--size {spec.size}: must be a multiple of {multiple} (patch {model_cfg.patch} x "
                         f"codec downsampling {codec.downsample})")
    video_spec = spec.in_video_frames(codec.temporal_factor)
    print(f"rendering {spec.num_clips} held-out synthetic scenes (seed {spec.synthetic_seed}, "
          f"{video_spec.total_frames} frames of {spec.size}px)", flush=True)
    truth, scenes = synthetic_truth(video_spec)
    encoder = text_encoder_for(args.text_encoder or index, model_cfg, device)
    if encoder is None:
        return HeldOut(truth, scenes, codec, None, None, "unconditional")
    text, text_mask = pad_text(encoder.encode([s.caption() for s in scenes]), model_cfg.text_len)
    return HeldOut(truth, scenes, codec, text, text_mask, f"captions embedded with {encoder.path}")


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        _check_paths(args)
        model, info = _load(args.export, device)
        sampling = dataclass_from_options(SamplingSpec, args, base=exported_sampling(info))
        diffusion = exported_diffusion(info, eta=args.eta)
        index = training_index(info)
        spec = _spec(args, sampling, info, index)
        clips = _held_out_clips(spec, model.cfg, info, index, args, device)
        i3d = _load_i3d(args.i3d, device) if args.i3d is not None else None
    except (ValueError, DataError, DatasetIndexError, StorageError, OSError, CheckpointError) as exc:
        ap.error(str(exc).splitlines()[0])

    s = spec.sampling
    use_cache = s.kv_cache and model.cfg.causal
    plan = [f"chunk {s.chunk}", f"window {s.window}", *([f"sink {s.sink}"] if s.sink else []), f"{s.steps} steps",
            f"eta {diffusion.eta:g}"]
    if s.context_scale != 1.0:
        plan.append(f"context guidance {s.context_scale:g}" + (
            f" against context noised to {s.context_guidance_noise:g}" if s.context_guidance_noise else ""))
    if s.context_noise:
        plan.append(f"context noise {s.context_noise:g}")
    if s.cfg_scale != 1.0 and clips.text is not None:
        plan.append(f"caption guidance {s.cfg_scale:g}")
    plan += ["kv-cache" if use_cache else "no cache", clips.conditioning]
    print(f"continuing {spec.num_clips} clips from {s.prompt_frames} prompt frames for {spec.multiples} x "
          f"{spec.clip_len} frames ({', '.join(plan)})", flush=True)
    videos = continue_videos(model, diffusion, clips.codec, clips.truth, spec, seed=args.seed,
                             text=clips.text, text_mask=clips.text_mask,
                             progress=lambda line: print("  " + line, flush=True))
    try:
        report = evaluate_videos(clips.truth, {"model": videos}, spec.in_video_frames(clips.codec.temporal_factor),
                                 clips.scenes, i3d)
    except RuntimeError as exc:  # an I3D that cannot take these chunks
        if i3d is None:
            raise
        ap.error(f"--i3d {args.i3d}: {str(exc).splitlines()[0]}")
    report.source = Source(
        export=str(args.export), step=info.get("step"), weights=info.get("weights"),
        truth=f"latent dataset {args.data}" if args.data else f"synthetic scenes, seed {spec.synthetic_seed}",
        conditioning=clips.conditioning, kv_cache=use_cache, temporal=model.cfg.temporal, eta=diffusion.eta,
    )
    paths = write_outputs(report, clips.truth, {"model": videos}, args.out)
    print(format_summary(report))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
