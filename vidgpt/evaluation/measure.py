"""Measuring generated video against the truth: per frame, per Step-metric chunk, and over the first
m clip lengths, for every method and the copy_last baseline.

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
  with an I3D, on I3D features (`fvd_i3d`, FVD);
- by multiple: every figure over the first m*L generated frames for m = 1..k.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from data_pipeline.synthetic import Scene
from vidgpt import metrics
from vidgpt.evaluation.generation import copy_last
from vidgpt.evaluation.report import (
    COPY_LAST,
    FrameCurves,
    MethodFigures,
    ObjectFigures,
    RangeFigures,
    Report,
    TruthFigures,
)
from vidgpt.evaluation.spec import EvalSpec


def scene_object_stats(videos: np.ndarray, scenes: Sequence[Scene], spec: EvalSpec) -> list[metrics.ObjectStats]:
    """Per-frame object statistics of every clip (N, T, H, W, 3), its pixels classified against its
    scene's background and palette (spec.tolerance, spec.blend_tolerance, spec.min_pixels)."""
    return [metrics.object_stats(metrics.classify(v, s.background, spec.tolerance, spec.blend_tolerance),
                                 spec.min_pixels)
            for v, s in zip(videos, scenes, strict=True)]


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


def _per_frame(truth: np.ndarray, video: np.ndarray, truth_stats: list[metrics.ObjectStats] | None,
               scenes: Sequence[Scene] | None, spec: EvalSpec) -> _PerFrame:
    values = _PerFrame(mse=metrics.mse(video, truth), psnr=metrics.psnr(video, truth))
    if truth_stats is not None and scenes is not None:
        stats = scene_object_stats(video, scenes, spec)
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


def _curves(v: _PerFrame) -> FrameCurves:
    """Per-frame curves: means over clips (presence F1 pooled over clips and colours)."""
    if v.garbage is None:
        return FrameCurves(mse=v.mse.mean(axis=0).tolist(), psnr=v.psnr.mean(axis=0).tolist())
    assert v.tp is not None and v.fp is not None and v.fn is not None and v.centroid is not None and v.part is not None
    tp, fp, fn = v.tp.sum(axis=0), v.fp.sum(axis=0), v.fn.sum(axis=0)  # (T,)
    return FrameCurves(
        mse=v.mse.mean(axis=0).tolist(), psnr=v.psnr.mean(axis=0).tolist(),
        garbage=v.garbage.mean(axis=0).tolist(),
        presence_f1=[metrics.f1_from_counts(*c) for c in zip(tp, fp, fn)],
        centroid_error=[_nanmean(v.centroid[:, t]) for t in range(v.centroid.shape[1])],
        largest_part=[_nanmean(v.part[:, t]) for t in range(v.part.shape[1])],
    )


def _over(v: _PerFrame, start: int, end: int, frechet: dict[str, float]) -> RangeFigures:
    """Every frame metric over frames [start, end) of all clips, with the given Fréchet distances."""
    objects = None
    if v.garbage is not None:
        assert v.tp is not None and v.fp is not None and v.fn is not None and v.centroid is not None and v.part is not None
        objects = ObjectFigures(
            garbage=float(v.garbage[:, start:end].mean()),
            presence_f1=metrics.f1_from_counts(float(v.tp[:, start:end].sum()), float(v.fp[:, start:end].sum()),
                                               float(v.fn[:, start:end].sum())),
            centroid_error=_nanmean(v.centroid[:, start:end]),
            largest_part=_nanmean(v.part[:, start:end]),
        )
    return RangeFigures(frames=(start, end), mse=float(v.mse[:, start:end].mean()),
                        psnr=float(v.psnr[:, start:end].mean()), objects=objects, frechet=frechet)


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


def _truth_figures(truth_stats: list[metrics.ObjectStats], spec: EvalSpec) -> TruthFigures:
    garbage = np.stack([s.garbage for s in truth_stats])  # (N, T)
    P = spec.sampling.prompt_frames
    return TruthFigures(
        per_frame_garbage=garbage.mean(axis=0).tolist(),
        per_chunk_garbage=[float(garbage[:, slice(*spec.chunk_range(j))].mean()) for j in range(spec.multiples)],
        garbage=float(garbage[:, P:].mean()),
        largest_part=_nanmean(np.stack([s.mean_largest_part() for s in truth_stats])[:, P:]),
    )


def evaluate_videos(
    truth: np.ndarray,
    videos: Mapping[str, np.ndarray],
    spec: EvalSpec,
    scenes: Sequence[Scene] | None = None,
    i3d: torch.nn.Module | None = None,
) -> Report:
    """Measure every generated video set against truth, with the copy_last baseline added.

    truth and each video: uint8 (N, P + k*L, H, W, 3), prompt frames included. scenes (one per clip)
    enable the object metrics; i3d (a TorchScript I3D, see `metrics.i3d_features`) adds fvd_i3d.
    Figures are NaN where undefined (e.g. no colour shared with the truth); `Report.to_json` makes
    them null.
    """
    T, P, L, k = spec.total_frames, spec.sampling.prompt_frames, spec.clip_len, spec.multiples
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
    truth_stats = scene_object_stats(truth, scenes, spec) if scenes is not None else None
    truth_feats = _chunk_features(truth, spec, i3d)
    frechet_names = list(truth_feats[0])

    figures: dict[str, MethodFigures] = {}
    for name, video in methods.items():
        values = _per_frame(truth, video, truth_stats, scenes, spec)
        feats = _chunk_features(video, spec, i3d)
        per_chunk = [
            _over(values, *spec.chunk_range(j),
                  frechet={f: metrics.frechet_distance(feats[j][f], truth_feats[j][f]) for f in frechet_names})
            for j in range(k)
        ]
        by_multiple = [  # the Fréchet distances: the mean of the Step-metric over the first m chunks
            _over(values, P, P + m * L, frechet={f: float(np.mean([c.frechet[f] for c in per_chunk[:m]]))
                                                 for f in frechet_names})
            for m in range(1, k + 1)
        ]
        figures[name] = MethodFigures(per_frame=_curves(values), per_chunk=per_chunk, by_multiple=by_multiple)
    return Report(spec=spec, clips=int(truth.shape[0]), frame_size=(int(truth.shape[2]), int(truth.shape[3])),
                  frechet_metrics=frechet_names, methods=figures,
                  truth=_truth_figures(truth_stats, spec) if truth_stats is not None else None)
