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
- per frame: MSE and PSNR (on [0, 1] pixels, PSNR capped at 100 dB); on synthetic scenes also the
  object metrics: every pixel is classified to the scene background or a palette colour, or is
  "garbage" when it is near none of them; colour-presence F1 against the truth frame's colours,
  centroid error in pixels for colours present in both, the garbage fraction (the truth's own,
  from mp4 chroma bleeding at shape edges, is reported as the floor), and `largest_part`: per colour
  present, the share of its pixels in its largest connected part (1 for solid shapes, low when a
  shape breaks into fragments of its colour, which presence F1 cannot see; the truth's is reported);
- per chunk of L generated frames (Step-metrics, like the paper's Step-FVD): the frame metrics, and
  the Fréchet distance over the clips between the generated chunk and the truth's same chunk, on
  `frechet_pixstat` features (pooled colour and motion statistics: cheap, built in, NOT FVD) and,
  with --i3d, on I3D features (`fvd_i3d`, FVD);
- summary: every figure over the first m*L generated frames for m = 1..k, and the goal figures:
  presence F1 and garbage over the whole continuation, centroid error over the first clip length
  against copy_last's.
The copy_last baseline repeats the last prompt frame: a model must beat it on motion (centroid error)
while matching it on appearance (presence F1, garbage).

Writes report.json, metrics.png (per-frame curves) and sheet.png (truth and generated frames) into --out.
report.json: "spec", "frames" (P + k*L), "chunks" ([start, end) of each), "frechet_metrics", "methods"
{"model", "copy_last"} each with "per_frame" {metric: one value per frame, prompt included},
"per_chunk" [one entry per chunk], "by_multiple" [figures over the first m*L generated frames];
"truth" (its own garbage, the floor); "summary" (goals, and per method the goal figures and "meets");
"source" (export, step, truth, conditioning, kv_cache). Undefined figures are null.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipeline.codecs import Codec
from data_pipeline.synthetic import Scene, synthetic_scene
from vidgpt import metrics
from vidgpt.cli import OneLineParser
from vidgpt.diffusion import Diffusion
from vidgpt.model import VidGPT
from vidgpt.sampling import PRECISIONS, generate, sampling_autocast

COPY_LAST = "copy_last"
"""Name of the baseline that repeats the last prompt frame."""

GOALS: dict[str, float] = {"presence_f1_min": 0.9, "garbage_max": 0.05, "centroid_ratio_max": 0.5}
"""The demo's goals: presence F1 and garbage over the whole continuation; centroid error over the
first clip length as a fraction of copy_last's."""

FRAME_METRICS: tuple[str, ...] = ("mse", "psnr", "garbage", "presence_f1", "centroid_error", "largest_part")
"""Per-frame curves of every method (the last three only on synthetic scenes)."""


# ----------------------------------------------------------------------------- the specification


def default_chunk(clip_len: int) -> int:
    """Frames per autoregressive chunk when not given: half the training clip, at most 8 (the
    paper's 33-frame clips: chunk 8 with a 25-frame window)."""
    return max(1, min(8, clip_len // 2))


@dataclass(frozen=True)
class EvalSpec:
    """What to generate and how to measure it; chunk/window None are filled from clip_len."""

    prompt_frames: int = 2
    """P: true frames given to the model."""
    clip_len: int = 8
    """L: the training clip length (data.num_frames); Step-metric chunks have this length."""
    multiples: int = 4
    """k: frames generated after the prompt, in training clip lengths (k*L frames)."""
    chunk: int | None = None
    """Frames denoised together; None: `default_chunk(clip_len)`."""
    window: int | None = None
    """Finished frames a chunk attends to (kv-cache size); None: clip_len - chunk (at least 1)."""
    steps: int = 25
    """Denoising steps per chunk."""
    context_scale: float = 1.0
    """Guidance on the earlier frames (`generate`'s context_scale; 1 = none)."""
    num_clips: int = 8
    """Held-out clips (the Fréchet distances fit Gaussians over them)."""
    synthetic_seed: int = 1000
    """Seed of the held-out synthetic scenes (training data uses seed 0)."""
    size: int = 32
    """Synthetic frame height and width (even, for yuv420p)."""
    fps: float = 8.0
    """Frame rate of the mp4 round trip of synthetic truth."""
    tolerance: float = metrics.DEFAULT_TOLERANCE
    """RGB L2 distance within which a pixel counts as the background or a palette colour."""
    min_pixels: int | None = None
    """Pixels a colour needs to be present in a frame; None: `metrics.default_min_pixels`."""

    def __post_init__(self) -> None:
        chunk = default_chunk(self.clip_len) if self.chunk is None else self.chunk
        object.__setattr__(self, "chunk", chunk)
        if self.window is None:
            object.__setattr__(self, "window", max(1, self.clip_len - chunk))
        problems = [f"{name} must be >= {low} (got {getattr(self, name)})"
                    for name, low in (("prompt_frames", 1), ("clip_len", 2), ("multiples", 1), ("chunk", 1),
                                      ("window", 1), ("steps", 1), ("num_clips", 1), ("synthetic_seed", 0))
                    if getattr(self, name) < low]
        if not problems and self.prompt_frames >= self.clip_len:
            problems.append(f"prompt_frames ({self.prompt_frames}) must be < the training clip length "
                            f"({self.clip_len}): the model never saw longer prompts")
        if not (math.isfinite(self.context_scale) and self.context_scale > 0):
            problems.append(f"context_scale must be a number > 0 (got {self.context_scale})")
        if self.size < 8 or self.size % 2:
            problems.append(f"size must be an even number >= 8 (got {self.size})")
        if not (math.isfinite(self.fps) and self.fps > 0):
            problems.append(f"fps must be > 0 (got {self.fps})")
        if not self.tolerance > 0:
            problems.append(f"tolerance must be > 0 (got {self.tolerance})")
        if self.min_pixels is not None and self.min_pixels < 1:
            problems.append(f"min_pixels must be >= 1 (got {self.min_pixels})")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def generated_frames(self) -> int:
        """k*L frames generated after the prompt."""
        return self.multiples * self.clip_len

    @property
    def total_frames(self) -> int:
        """P + k*L frames of every truth and generated video."""
        return self.prompt_frames + self.generated_frames

    def chunk_range(self, j: int) -> tuple[int, int]:
        """[start, end) frame indices of Step-metric chunk j (0-based) of the continuation."""
        start = self.prompt_frames + j * self.clip_len
        return start, start + self.clip_len


# ----------------------------------------------------------------------------- ground truth


def mp4_round_trip(frames: np.ndarray, fps: float) -> np.ndarray:
    """uint8 (T, H, W, 3) -> the same frames written to an in-memory mp4 and decoded again (yuv420p
    chroma subsampling and x264 quantisation, like the training videos went through)."""
    from data_pipeline.video import DecodeOptions, decode_clips, write_video

    buffer = io.BytesIO()
    write_video(buffer, frames, fps)
    buffer.seek(0)
    t, h, w, _ = frames.shape
    decoded = decode_clips(buffer, DecodeOptions(height=h, width=w, max_frames=t))[0].frames
    if decoded.shape != frames.shape:
        raise RuntimeError(f"mp4 round trip changed the frames' shape: {frames.shape} -> {decoded.shape}")
    return decoded


def synthetic_truth(spec: EvalSpec) -> tuple[np.ndarray, list[Scene]]:
    """Held-out synthetic clips: uint8 (N, P + k*L, S, S, 3) after the mp4 round trip, and their scenes.

    Clip i is `synthetic_scene(i, size=S, seed=spec.synthetic_seed).render(P + k*L)`."""
    scenes = [synthetic_scene(i, size=spec.size, seed=spec.synthetic_seed) for i in range(spec.num_clips)]
    truth = np.stack([mp4_round_trip(s.render(spec.total_frames), spec.fps) for s in scenes])
    return truth, scenes


@dataclass
class DatasetTruth:
    """Clips of a latent dataset, decoded."""

    frames: np.ndarray
    """uint8 (N, P + k*L, H, W, 3)."""
    captions: list[str | None]
    """Each clip's caption, if the dataset has one."""
    text: torch.Tensor | None
    """(N, L, D) caption embeddings when every clip has them, else None."""
    text_mask: torch.Tensor | None
    """(N, L) bool, True = valid token."""


def dataset_codec(path: str, vae: str | None = None) -> Codec:
    """The codec that decodes the latents of the dataset at `path` (its index.json "codec")."""
    from data_pipeline.index import read_json
    from data_pipeline.storage import join

    return index_codec(read_json(join(path, "index.json")), vae)


def index_codec(index: Mapping[str, Any], vae: str | None = None) -> Codec:
    """The codec a dataset index (index.json, read) records; vae: another VAE location for sd-vae."""
    from data_pipeline.codecs import build_codec

    info = index["codec"]
    return build_codec(info["name"], vae=(vae or info.get("vae")) if info["name"] == "sd-vae" else None)


def dataset_truth(path: str, spec: EvalSpec, codec: Codec, *, seed: int = 0) -> DatasetTruth:
    """The first spec.num_clips clips (in the loader's seeded order) of at least P + k*L frames,
    decoded from their first frame; ValueError when the dataset has too few of them."""
    from data_pipeline.loader import LatentLoader, LoaderConfig, load_table

    need = spec.total_frames
    table = load_table(path)
    lengths = [n for shard in table.frames for n in shard]
    long_enough = sum(n >= need for n in lengths)
    if long_enough < spec.num_clips:
        raise ValueError(
            f"{path}: {long_enough} of {len(lengths)} clips have >= {need} frames (P + k*L = "
            f"{spec.prompt_frames} + {spec.multiples}*{spec.clip_len}; longest {max(lengths, default=0)}), "
            f"need {spec.num_clips}: use fewer --clips, --multiples or --prompt-frames"
        )
    loader = LatentLoader(LoaderConfig(path, num_frames=need, batch_size=1, crop="whole", seed=seed), table=table)
    latents: list[np.ndarray] = []
    captions: list[str | None] = []
    texts: list[np.ndarray | None] = []
    for batch in loader:
        if not bool(batch["valid"].all()):
            continue
        latents.append(batch["latents"][0].float().numpy())  # (T, C, h, w)
        captions.append(batch["captions"][0])
        text = batch.get("text")
        texts.append(None if text is None or not bool(batch["text_mask"].any()) else
                     text[0][batch["text_mask"][0]].float().numpy())  # (L_i, D)
        if len(latents) == spec.num_clips:
            break
    frames = np.stack([codec.decode(z) for z in latents])  # (N, T, H, W, 3)
    text_t = mask_t = None
    if all(t is not None for t in texts):
        text_t, mask_t = pad_text([t for t in texts if t is not None])
    return DatasetTruth(frames, captions, text_t, mask_t)


def pad_text(embeddings: Sequence[np.ndarray], max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-caption (L_i, D) embeddings -> (N, L, D) float32 zero-padded and (N, L) bool mask, each
    truncated to max_len tokens."""
    embeddings = [np.asarray(e)[:max_len] for e in embeddings]
    length = max(e.shape[0] for e in embeddings)
    dim = embeddings[0].shape[1]
    text = torch.zeros(len(embeddings), length, dim)
    mask = torch.zeros(len(embeddings), length, dtype=torch.bool)
    for i, e in enumerate(embeddings):
        text[i, : e.shape[0]] = torch.from_numpy(e.astype(np.float32))
        mask[i, : e.shape[0]] = True
    return text, mask


# ----------------------------------------------------------------------------- generation


def continue_videos(
    model: VidGPT,
    diffusion: Diffusion,
    codec: Codec,
    truth: np.ndarray,
    spec: EvalSpec,
    *,
    use_cache: bool = True,
    seed: int = 0,
    text: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    batch_size: int | None = None,
    progress: Callable[[str], None] | None = None,
    autocast: torch.dtype | None = None,
) -> np.ndarray:
    """Continue every truth clip from its first P frames for k*L frames: uint8 (N, P + k*L, H, W, 3)
    with the (codec round-tripped) prompt frames first.

    truth: uint8 (N, >= P, H, W, 3); prompts are codec.encode(truth[i, :P]). The model runs on the
    device of its parameters, in the mode it is in (eval for sampling). A bidirectional model is
    sampled without the kv-cache. batch_size: clips per `generate` call (None: all at once).
    text/text_mask: (N, L, D) / (N, L) caption embeddings, or None for unconditional generation.
    autocast: the network's dtype under torch.autocast (see `generate`); None: float32.
    """
    P = spec.prompt_frames
    if truth.ndim != 5 or truth.shape[1] < P:
        raise ValueError(f"truth must be (N, T >= {P}, H, W, 3), got {truth.shape}")
    device = next(model.parameters()).device
    use_cache = use_cache and model.cfg.causal  # a bidirectional model can only recompute the window
    generator = torch.Generator(device).manual_seed(seed)
    step = batch_size or truth.shape[0]
    out: list[np.ndarray] = []
    for lo in range(0, truth.shape[0], step):
        hi = min(lo + step, truth.shape[0])
        prompt = torch.stack([torch.from_numpy(codec.encode(v[:P])) for v in truth[lo:hi]])  # (B, P, C, h, w)

        def report(done: int, total: int, lo: int = lo, hi: int = hi) -> None:
            if progress is not None:
                progress(f"clips {lo + 1}-{hi} of {truth.shape[0]}: {done}/{total} frames generated")

        latents = generate(
            model, diffusion, prompt.to(device), spec.generated_frames, chunk=spec.chunk, window=spec.window,
            steps=spec.steps, use_cache=use_cache, generator=generator, progress=report,
            text=None if text is None else text[lo:hi].to(device),
            text_mask=None if text_mask is None else text_mask[lo:hi].to(device), autocast=autocast,
            context_scale=spec.context_scale,
        )  # (B, P + k*L, C, h, w)
        out += [codec.decode(z.float().cpu()) for z in latents]  # each (T, H, W, 3) uint8
    return np.stack(out)


def copy_last(truth: np.ndarray, prompt_frames: int) -> np.ndarray:
    """The baseline: the prompt frames, then the last one repeated; uint8 (N, T, H, W, 3) like truth."""
    video = truth.copy()
    video[:, prompt_frames:] = truth[:, prompt_frames - 1 : prompt_frames]
    return video


# ----------------------------------------------------------------------------- measuring


@dataclass
class _PerFrame:
    """One method's per-(clip, frame) values, each (N, T); object fields None without scenes."""

    mse: np.ndarray
    psnr: np.ndarray
    garbage: np.ndarray | None = None
    tp: np.ndarray | None = None
    fp: np.ndarray | None = None
    fn: np.ndarray | None = None
    centroid: np.ndarray | None = None
    part: np.ndarray | None = None


def _object_stats(videos: np.ndarray, scenes: Sequence[Scene], spec: EvalSpec) -> list[metrics.ObjectStats]:
    """Object statistics of every clip (N, T, H, W, 3), classified against its scene's background."""
    return [metrics.object_stats(metrics.classify(v, s.background, spec.tolerance), spec.min_pixels)
            for v, s in zip(videos, scenes, strict=True)]


def _per_frame(truth: np.ndarray, video: np.ndarray, truth_stats: list[metrics.ObjectStats] | None,
               scenes: Sequence[Scene] | None, spec: EvalSpec) -> _PerFrame:
    values = _PerFrame(mse=metrics.mse(video, truth), psnr=metrics.psnr(video, truth))
    if truth_stats is not None and scenes is not None:
        stats = _object_stats(video, scenes, spec)
        values.garbage = np.stack([s.garbage for s in stats])
        counts = [metrics.presence_counts(s.presence, t.presence) for s, t in zip(stats, truth_stats)]
        values.tp, values.fp, values.fn = (np.stack([c[i] for c in counts]) for i in range(3))
        values.centroid = np.stack([metrics.centroid_error(s, t) for s, t in zip(stats, truth_stats)])
        values.part = np.stack([s.mean_largest_part() for s in stats])
    return values


def _nanmean(x: np.ndarray) -> float:
    """Mean of the finite entries; NaN when there are none."""
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def _curves(v: _PerFrame) -> dict[str, list[float]]:
    """Per-frame curves: means over clips (presence F1 pooled over clips and colours)."""
    curves = {"mse": v.mse.mean(axis=0).tolist(), "psnr": v.psnr.mean(axis=0).tolist()}
    if v.garbage is not None:
        curves["garbage"] = v.garbage.mean(axis=0).tolist()
        tp, fp, fn = v.tp.sum(axis=0), v.fp.sum(axis=0), v.fn.sum(axis=0)  # (T,)
        curves["presence_f1"] = [metrics.f1_from_counts(*c) for c in zip(tp, fp, fn)]
        curves["centroid_error"] = [_nanmean(v.centroid[:, t]) for t in range(v.centroid.shape[1])]
        curves["largest_part"] = [_nanmean(v.part[:, t]) for t in range(v.part.shape[1])]
    return curves


def _over(v: _PerFrame, start: int, end: int) -> dict[str, float]:
    """Every frame metric over frames [start, end) of all clips."""
    out = {"frames": [start, end], "mse": float(v.mse[:, start:end].mean()),
           "psnr": float(v.psnr[:, start:end].mean())}
    if v.garbage is not None:
        out["garbage"] = float(v.garbage[:, start:end].mean())
        out["presence_f1"] = metrics.f1_from_counts(
            float(v.tp[:, start:end].sum()), float(v.fp[:, start:end].sum()), float(v.fn[:, start:end].sum()))
        out["centroid_error"] = _nanmean(v.centroid[:, start:end])
        out["largest_part"] = _nanmean(v.part[:, start:end])
    return out


def _chunk_features(videos: np.ndarray, spec: EvalSpec, i3d: torch.nn.Module | None) -> list[dict[str, np.ndarray]]:
    """Per Step-metric chunk: {feature name: (N, D)} of the N clips' chunk."""
    out = []
    for j in range(spec.multiples):
        start, end = spec.chunk_range(j)
        chunk = videos[:, start:end]  # (N, L, H, W, 3)
        feats = {metrics.PIXSTAT_NAME: metrics.pixstat_features(chunk)}
        if i3d is not None:
            feats[metrics.I3D_NAME] = metrics.i3d_features(i3d, chunk)
        out.append(feats)
    return out


def evaluate_videos(
    truth: np.ndarray,
    videos: Mapping[str, np.ndarray],
    spec: EvalSpec,
    scenes: Sequence[Scene] | None = None,
    i3d: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Measure every generated video set against truth, with the copy_last baseline added.

    truth and each video: uint8 (N, P + k*L, H, W, 3), prompt frames included. scenes (one per clip)
    enable the object metrics; i3d (a TorchScript I3D, see `metrics.i3d_features`) adds fvd_i3d.
    Returns the report (the layout is in this module's docstring), NaN where a figure is undefined
    (e.g. no colour shared with the truth); `json_ready` turns those into null.
    """
    T, P, L, k = spec.total_frames, spec.prompt_frames, spec.clip_len, spec.multiples
    if truth.dtype != np.uint8 or truth.ndim != 5 or truth.shape[1] != T or truth.shape[-1] != 3:
        raise ValueError(f"truth must be uint8 (N, P + k*L = {T}, H, W, 3), got {truth.dtype} {truth.shape}")
    if COPY_LAST in videos:
        raise ValueError(f"{COPY_LAST!r} is the baseline's name; call the method something else")
    for name, video in videos.items():
        if video.shape != truth.shape or video.dtype != np.uint8:
            raise ValueError(f"videos[{name!r}] must be uint8 {truth.shape} like truth, got {video.dtype} {video.shape}")
    if scenes is not None and len(scenes) != truth.shape[0]:
        raise ValueError(f"{len(scenes)} scenes for {truth.shape[0]} clips")
    methods = {**videos, COPY_LAST: copy_last(truth, P)}
    truth_stats = _object_stats(truth, scenes, spec) if scenes is not None else None
    truth_feats = _chunk_features(truth, spec, i3d)
    frechet_names = list(truth_feats[0])

    report: dict[str, Any] = {
        "spec": dataclasses.asdict(spec),
        "frames": T, "prompt_frames": P, "clip_len": L, "multiples": k, "clips": int(truth.shape[0]),
        "frame_size": [int(truth.shape[2]), int(truth.shape[3])],
        "object_metrics": scenes is not None,
        "frechet_metrics": frechet_names,
        "chunks": [list(spec.chunk_range(j)) for j in range(k)],
        "methods": {},
    }
    if truth_stats is not None:
        garbage = np.stack([s.garbage for s in truth_stats])  # (N, T)
        report["truth"] = {
            "per_frame": {"garbage": garbage.mean(axis=0).tolist()},
            "per_chunk": [{"frames": list(spec.chunk_range(j)),
                           "garbage": float(garbage[:, slice(*spec.chunk_range(j))].mean())} for j in range(k)],
            "garbage": float(garbage[:, P:].mean()),
            "largest_part": _nanmean(np.stack([s.mean_largest_part() for s in truth_stats])[:, P:]),
        }
    for name, video in methods.items():
        values = _per_frame(truth, video, truth_stats, scenes, spec)
        feats = _chunk_features(video, spec, i3d)
        per_chunk = []
        for j in range(k):
            entry = {"chunk": j, **_over(values, *spec.chunk_range(j))}
            for fname in frechet_names:
                entry[fname] = metrics.frechet_distance(feats[j][fname], truth_feats[j][fname])
            per_chunk.append(entry)
        by_multiple = []
        for m in range(1, k + 1):
            entry = {"multiple": m, **_over(values, P, P + m * L)}
            for fname in frechet_names:  # mean of the Step-metric over the first m chunks
                entry[fname] = float(np.mean([c[fname] for c in per_chunk[:m]]))
            by_multiple.append(entry)
        report["methods"][name] = {"per_frame": _curves(values), "per_chunk": per_chunk, "by_multiple": by_multiple}
    report["summary"] = _summary(report)
    return report


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The goal figures of every method against copy_last (object figures None without scenes)."""
    k = report["multiples"]
    base = report["methods"][COPY_LAST]["by_multiple"]
    out: dict[str, Any] = {
        "goals": dict(GOALS),
        "whole": [report["prompt_frames"], report["frames"]],
        "first_clip": [report["prompt_frames"], report["prompt_frames"] + report["clip_len"]],
        "truth_garbage": report["truth"]["garbage"] if "truth" in report else None,
        "truth_largest_part": report["truth"]["largest_part"] if "truth" in report else None,
        "methods": {},
    }
    for name, method in report["methods"].items():
        whole, first = method["by_multiple"][k - 1], method["by_multiple"][0]
        row: dict[str, Any] = {"psnr": whole["psnr"], "mse": whole["mse"]}
        for fname in report["frechet_metrics"]:
            row[f"{fname}_last_chunk"] = method["per_chunk"][-1][fname]
        if report["object_metrics"]:
            f1, garbage, centroid = whole["presence_f1"], whole["garbage"], first["centroid_error"]
            base_centroid = base[0]["centroid_error"]
            ratio = centroid / base_centroid if base_centroid > 0 else math.nan
            row |= {
                "presence_f1": f1, "garbage": garbage, "centroid_error_first_clip": centroid,
                "largest_part": whole["largest_part"],
                "copy_last_centroid_error_first_clip": base_centroid, "centroid_ratio_first_clip": ratio,
                "meets": {
                    "presence_f1": f1 >= GOALS["presence_f1_min"],
                    "garbage": garbage <= GOALS["garbage_max"],
                    "centroid": bool(centroid <= GOALS["centroid_ratio_max"] * base_centroid),
                },
            }
            row["meets"]["all"] = all(row["meets"].values())
        out["methods"][name] = row
    return out


def json_ready(obj: Any) -> Any:
    """The report with NaN/inf as None and numpy scalars as Python numbers (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    return obj


# ----------------------------------------------------------------------------- pictures


def write_plot(report: dict[str, Any], path: Path) -> Path:
    """PNG of one subplot per metric against frame index, one line per method (copy_last dashed), the
    truth's garbage as the floor, the Step-metric Fréchet distances per chunk; prompt frames shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in FRAME_METRICS if m in report["methods"][COPY_LAST]["per_frame"]]
    panels = names + list(report["frechet_metrics"])
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    frames = np.arange(report["frames"])
    P = report["prompt_frames"]
    for ax, panel in zip(axes.flat, panels):
        for name, method in report["methods"].items():
            style = {"linestyle": "--", "color": "gray"} if name == COPY_LAST else {}
            if panel in names:
                y = np.array([np.nan if v is None else v for v in method["per_frame"][panel]], dtype=float)
                ax.plot(frames, y, label=name, **style)
            else:
                x = [np.mean(c["frames"]) - 0.5 for c in method["per_chunk"]]
                ax.plot(x, [c[panel] for c in method["per_chunk"]], marker="o", label=name, **style)
        if panel == "psnr":  # identical (prompt) frames sit at the cap; keep the generated ones readable
            generated = [v for m in report["methods"].values() for v in m["per_frame"]["psnr"][P:]
                         if v is not None and math.isfinite(v)]
            if generated and max(generated) < metrics.PSNR_CAP:
                ax.set_ylim(min(generated) - 2, max(generated) + 8)
        if panel == "garbage" and "truth" in report:
            ax.plot(frames, report["truth"]["per_frame"]["garbage"], color="black", linewidth=1, label="truth (floor)")
        ax.axvspan(-0.5, P - 0.5, color="gold", alpha=0.2, linewidth=0)
        for start, _ in report["chunks"][1:]:
            ax.axvline(start - 0.5, color="lightgray", linewidth=0.8)
        ax.set_title(panel + (" (per chunk)" if panel not in names else ""))
        ax.set_xlabel("frame")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{report['clips']} clips, prompt {P} frames (shaded), chunks of {report['clip_len']} frames")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_contact_sheet(
    truth: np.ndarray,
    videos: Mapping[str, np.ndarray],
    path: Path,
    *,
    every: int | None = None,
    clips: int = 2,
    prompt_frames: int = 0,
) -> Path:
    """PNG of truth and each method's frames, one row each, for the first `clips` clips.

    truth and videos: uint8 (N, T, H, W, 3). Columns: the prompt frames, then every `every`-th frame
    (None: about 12 columns) and the last; frames upscaled (nearest neighbour) to >= 64 px; prompt
    frames framed in yellow; frame indices above, row names on the left."""
    from PIL import Image, ImageDraw

    n, T, H, W, _ = truth.shape
    every = every or max(1, math.ceil((T - prompt_frames) / 12))
    columns = sorted(set(range(prompt_frames)) | set(range(prompt_frames + every - 1, T, every)) | {T - 1})
    scale = max(1, math.ceil(64 / max(H, W)))
    cell_h, cell_w, pad, label_w, header = H * scale, W * scale, 4, 90, 14
    rows = [("truth", truth), *videos.items()]
    shown = min(clips, n)
    block_h = header + len(rows) * (cell_h + pad)
    sheet = Image.new("RGB", (label_w + len(columns) * (cell_w + pad), shown * (block_h + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c in range(shown):
        top = c * (block_h + pad)
        draw.text((2, top + 2), f"clip {c}", fill=(0, 0, 0))
        for col, t in enumerate(columns):
            draw.text((label_w + col * (cell_w + pad), top + 2), str(t), fill=(0, 0, 0))
        for r, (name, video) in enumerate(rows):
            y = top + header + r * (cell_h + pad)
            draw.text((2, y + cell_h // 2 - 5), name[:14], fill=(0, 0, 0))
            for col, t in enumerate(columns):
                x = label_w + col * (cell_w + pad)
                frame = Image.fromarray(np.ascontiguousarray(video[c, t])).resize((cell_w, cell_h), Image.NEAREST)
                sheet.paste(frame, (x, y))
                if t < prompt_frames:
                    draw.rectangle([x - 2, y - 2, x + cell_w + 1, y + cell_h + 1], outline=(240, 200, 0), width=2)
    path = Path(path)
    sheet.save(path)
    return path


def write_outputs(report: dict[str, Any], truth: np.ndarray, videos: Mapping[str, np.ndarray],
                  out_dir: Path) -> dict[str, Path]:
    """report.json, metrics.png and sheet.png (truth and `videos`, copy_last left out) in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"report": out_dir / "report.json", "plot": out_dir / "metrics.png", "sheet": out_dir / "sheet.png"}
    paths["report"].write_text(json.dumps(json_ready(report), indent=1, allow_nan=False) + "\n")
    write_plot(report, paths["plot"])
    write_contact_sheet(truth, videos, paths["sheet"], prompt_frames=report["prompt_frames"])
    return paths


def format_summary(report: dict[str, Any]) -> str:
    """A few lines: the goal figures of every method beside copy_last's."""
    s = report["summary"]
    lines = []
    for name, row in s["methods"].items():
        if name == COPY_LAST:
            continue
        base = s["methods"][COPY_LAST]
        lines.append(f"{name}: PSNR {row['psnr']:.2f} dB (copy_last {base['psnr']:.2f})")
        for fname in report["frechet_metrics"]:
            key = f"{fname}_last_chunk"
            lines.append(f"  {fname}, last chunk: {row[key]:.4g} (copy_last {base[key]:.4g})")
        if not report["object_metrics"]:
            continue
        ok = {True: "ok", False: "MISSED"}
        lines += [
            f"  presence F1, whole {report['multiples']}x continuation: {row['presence_f1']:.3f} "
            f"(copy_last {base['presence_f1']:.3f}; goal >= {GOALS['presence_f1_min']}) {ok[row['meets']['presence_f1']]}",
            f"  garbage, whole continuation: {100 * row['garbage']:.2f}% (copy_last {100 * base['garbage']:.2f}%, "
            f"truth floor {100 * s['truth_garbage']:.2f}%; goal <= {100 * GOALS['garbage_max']:.0f}%) "
            f"{ok[row['meets']['garbage']]}",
            f"  centroid error, first clip length: {row['centroid_error_first_clip']:.2f} px (copy_last "
            f"{row['copy_last_centroid_error_first_clip']:.2f} px; goal <= {GOALS['centroid_ratio_max']}x) "
            f"{ok[row['meets']['centroid']]}",
            f"  largest part per colour, whole continuation: {row['largest_part']:.3f} (copy_last "
            f"{base['largest_part']:.3f}, truth {s['truth_largest_part']:.3f}; 1 = solid shapes, low = fragments)",
        ]
    return "\n".join(lines)


def evaluate_model(
    model: VidGPT,
    diffusion: Diffusion,
    codec: Codec,
    spec: EvalSpec,
    *,
    out_dir: Path | None = None,
    use_cache: bool = True,
    seed: int = 0,
    text_encoder: Any | None = None,
    i3d: torch.nn.Module | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole synthetic evaluation of an in-process model: held-out scenes, continuation, report
    (and its files in out_dir when given). text_encoder: a `data_pipeline.text.TextEncoder` to
    condition on the scenes' captions (None: unconditional)."""
    truth, scenes = synthetic_truth(spec)
    text = text_mask = None
    if text_encoder is not None and model.cfg.text_dim:
        text, text_mask = pad_text(text_encoder.encode([s.caption() for s in scenes]), model.cfg.text_len)
    videos = continue_videos(model, diffusion, codec, truth, spec, use_cache=use_cache, seed=seed,
                             text=text, text_mask=text_mask, progress=progress)
    report = evaluate_videos(truth, {"model": videos}, spec, scenes, i3d)
    report["conditioning"] = "captions" if text is not None else "unconditional"
    if out_dir is not None:
        report["files"] = {k: str(v) for k, v in write_outputs(report, truth, {"model": videos}, out_dir).items()}
    return report


# ----------------------------------------------------------------------------- the command line


def _parser() -> OneLineParser:
    ap = OneLineParser(prog="vidgpt-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export", type=Path, help="directory written by vidgpt-export (model.safetensors, config.json)")
    ap.add_argument("--out", type=Path, default=Path("eval"), help="output directory (default: eval)")
    ap.add_argument("--prompt-frames", type=int, default=2, help="true frames given to the model (default: 2)")
    ap.add_argument("--multiples", type=int, default=4,
                    help="generate k times the training clip length after the prompt (default: 4)")
    ap.add_argument("--clips", type=int, default=8, help="held-out clips (default: 8)")
    ap.add_argument("--clip-len", type=int, default=None,
                    help="training clip length L (default: data.num_frames of the export's config.json)")
    ap.add_argument("--chunk", type=int, default=None, help="frames per autoregressive chunk (default: min(8, L/2))")
    ap.add_argument("--window", type=int, default=None, help="kv-cache window (default: L - chunk)")
    ap.add_argument("--steps", type=int, default=25, help="denoising steps per chunk (default: 25)")
    ap.add_argument("--context-scale", type=float, default=1.0,
                    help="guidance on the earlier frames (vidgpt-sample --context-scale; default: 1 = none)")
    ap.add_argument("--no-cache", action="store_true", help="recompute the window every step (reference)")
    source = ap.add_mutually_exclusive_group()
    source.add_argument("--synthetic-seed", type=int, default=None,
                        help="seed of the held-out synthetic scenes (default: 1000; training uses 0)")
    source.add_argument("--data", help="a latent dataset to take held-out clips from instead (no object metrics)")
    ap.add_argument("--size", type=int, default=None,
                    help="synthetic frame size (default: the training dataset's, else 32)")
    ap.add_argument("--tolerance", type=float, default=metrics.DEFAULT_TOLERANCE,
                    help=f"RGB distance for a pixel to match a scene colour (default: {metrics.DEFAULT_TOLERANCE:g})")
    ap.add_argument("--text-encoder", help="T5 directory to embed the synthetic captions with "
                    "(default: the training dataset's, when it exists here; else unconditional)")
    ap.add_argument("--vae", help="sd-vae models: the VAE to decode with (default: the one in the dataset index)")
    ap.add_argument("--i3d", type=Path, help="a TorchScript I3D (StyleGAN-V's i3d_torchscript.pt) for fvd_i3d")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sampling noise and clip order (default: 0)")
    ap.add_argument("--precision", choices=PRECISIONS, default="auto",
                    help="network precision: auto (default) is bf16 on GPUs of compute capability >= 8.0, fp32 "
                    "elsewhere; the sampler's state stays fp32")
    return ap


def _training_index(info: Mapping[str, Any]) -> dict[str, Any] | None:
    """index.json of the export's training dataset, when it can be read from here."""
    from data_pipeline.index import DatasetIndexError, read_json
    from data_pipeline.storage import StorageError, join

    path = info.get("data", {}).get("path")
    if not path:
        return None
    try:
        return read_json(join(path, "index.json"))
    except (StorageError, DatasetIndexError, OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    from data_pipeline.codecs import build_codec
    from data_pipeline.index import DatasetIndexError
    from data_pipeline.loader import DataError
    from data_pipeline.storage import StorageError
    from vidgpt.export import CONFIG, WEIGHTS, context_guidance_refusal, exported_diffusion, load_exported

    export: Path = args.export
    if not (export / CONFIG).is_file() or not (export / WEIGHTS).is_file():
        ap.error(f"{export}: not an export directory (needs {WEIGHTS} and {CONFIG}; write one with vidgpt-export)")
    if args.i3d is not None and not args.i3d.is_file():
        ap.error(f"--i3d {args.i3d}: no such file")
    if args.text_encoder is not None and not Path(args.text_encoder).is_dir():
        ap.error(f"--text-encoder {args.text_encoder}: no such directory")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model, info = load_exported(export, device)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        ap.error(f"{export}: cannot load the exported model: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    if refusal := context_guidance_refusal(args.context_scale, info, str(export)):
        ap.error(refusal)
    clip_len = args.clip_len or info.get("data", {}).get("num_frames")
    if not clip_len:
        ap.error(f"{export / CONFIG} names no data.num_frames (the training clip length); pass --clip-len")
    train_index = _training_index(info)
    size = args.size or (train_index["size"][0] if train_index and train_index.get("size") else 32)
    try:
        spec = EvalSpec(prompt_frames=args.prompt_frames, clip_len=clip_len, multiples=args.multiples,
                        chunk=args.chunk, window=args.window, steps=args.steps, num_clips=args.clips,
                        context_scale=args.context_scale,
                        synthetic_seed=1000 if args.synthetic_seed is None else args.synthetic_seed,
                        size=size, tolerance=args.tolerance)
    except ValueError as exc:
        ap.error(str(exc))

    # the codec, the ground truth and the captions
    text = text_mask = None
    conditioning = "unconditional"
    try:
        if args.data:
            codec = dataset_codec(args.data, args.vae)
            data = dataset_truth(args.data, spec, codec, seed=args.seed)
            truth, scenes = data.frames, None
            if model.cfg.text_dim and data.text is not None:
                text, text_mask = data.text[:, : model.cfg.text_len], data.text_mask[:, : model.cfg.text_len]
                conditioning = "dataset captions"
        else:
            if train_index is not None:
                codec = dataset_codec(info["data"]["path"], args.vae)
            elif args.vae:
                codec = build_codec("sd-vae", vae=args.vae)
            elif model.cfg.in_channels == 3:
                codec = build_codec("identity")
            else:
                ap.error("cannot tell which codec decodes this model's latents (its training dataset is not "
                         "readable here): pass --data or --vae")
            multiple = model.cfg.patch * codec.downsample
            if spec.size % multiple:
                ap.error(f"--size {spec.size}: must be a multiple of {multiple} (patch {model.cfg.patch} x "
                         f"codec downsampling {codec.downsample})")
            print(f"rendering {spec.num_clips} held-out synthetic scenes (seed {spec.synthetic_seed}, "
                  f"{spec.total_frames} frames of {spec.size}px)", flush=True)
            truth, scenes = synthetic_truth(spec)
            encoder_path = args.text_encoder or ((train_index or {}).get("text_encoder") or {}).get("path")
            if model.cfg.text_dim and encoder_path and Path(encoder_path).is_dir():
                from data_pipeline.text import TextEncoder

                encoder = TextEncoder(encoder_path, max_length=model.cfg.text_len, device=device)
                if encoder.dim != model.cfg.text_dim:
                    ap.error(f"text encoder {encoder_path} gives {encoder.dim}-wide embeddings; the model takes "
                             f"{model.cfg.text_dim}")
                text, text_mask = pad_text(encoder.encode([s.caption() for s in scenes]), model.cfg.text_len)
                conditioning = f"captions embedded with {encoder_path}"
        i3d = torch.jit.load(str(args.i3d), map_location=device).eval() if args.i3d is not None else None
    except (ValueError, DataError, DatasetIndexError, StorageError, OSError) as exc:
        ap.error(str(exc).splitlines()[0])

    use_cache = not args.no_cache and model.cfg.causal
    print(f"continuing {spec.num_clips} clips from {spec.prompt_frames} prompt frames for {spec.multiples} x "
          f"{spec.clip_len} frames (chunk {spec.chunk}, window {spec.window}, {spec.steps} steps, "
          f"{f'context guidance {spec.context_scale:g}, ' if spec.context_scale != 1.0 else ''}"
          f"{'kv-cache' if use_cache else 'no cache'}, {conditioning})", flush=True)
    try:
        autocast = sampling_autocast(args.precision, device)
    except ValueError as exc:
        ap.error(f"--precision: {exc}")
    videos = continue_videos(model, exported_diffusion(info), codec, truth, spec,
                             use_cache=use_cache, seed=args.seed, text=text, text_mask=text_mask,
                             progress=lambda line: print("  " + line, flush=True), autocast=autocast)
    try:
        report = evaluate_videos(truth, {"model": videos}, spec, scenes, i3d)
    except RuntimeError as exc:  # an I3D that cannot take these chunks
        if i3d is None:
            raise
        ap.error(f"--i3d {args.i3d}: {str(exc).splitlines()[0]}")
    report["source"] = {
        "export": str(export), "step": info.get("step"), "weights": info.get("weights"),
        "truth": f"latent dataset {args.data}" if args.data else f"synthetic scenes, seed {spec.synthetic_seed}",
        "conditioning": conditioning, "kv_cache": use_cache,
        "temporal": model.cfg.temporal,
    }
    paths = write_outputs(report, truth, {"model": videos}, args.out)
    print(format_summary(report))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
