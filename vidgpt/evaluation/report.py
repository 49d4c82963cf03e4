"""The evaluation report: typed figures, the goal summary, and report.json (`Report.to_json`).

report.json: "spec", "frames" (P + k*L), "prompt_frames", "clip_len", "multiples", "clips",
"frame_size", "object_metrics", "frechet_metrics", "chunks" ([start, end) of each), "methods"
{"model", ..., "copy_last"} each with "per_frame" {metric: one value per frame, prompt included},
"per_chunk" [one entry per chunk], "by_multiple" [figures over the first m*L generated frames];
"truth" (its own garbage, the floor; synthetic scenes only); "summary" (goals, and per method the goal
figures and "meets"); "conditioning" (in-process evaluations) or "source" (vidgpt-eval: export, step,
weights, truth, conditioning, kv_cache, temporal). Undefined figures (NaN) are null.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vidgpt.evaluation.spec import EvalSpec

COPY_LAST = "copy_last"
"""Name of the baseline that repeats the last prompt frame."""

@dataclass(frozen=True)
class Goals:
    """One tier of the quality goals (issue 22), on held-out synthetic scenes against copy_last, the same
    scenes for both. Figures at the horizon: over the first min(4, k) clip lengths generated."""

    tier: str
    """What the tier is for: "demo" (vidgpt-demo, 10 minutes on 2 CPU cores) or "quality" (the quality run)."""
    centroid_ratio_max: float
    """Centroid error over the first clip length, at most this times copy_last's."""
    psnr_margin_db: float
    """PSNR over the first clip length above copy_last's by more than this many dB."""
    presence_f1_min: float
    """Colour-presence F1 at the horizon, at least this."""
    presence_f1_8x_min: float | None
    """Colour-presence F1 over 8 clip lengths, at least this (None: no such goal; unchecked when k < 8)."""
    largest_part_min: float
    """Largest part per colour at the horizon, at least this (solid shapes, not fragments)."""
    garbage_over_truth_max: float
    """Garbage at the horizon at most the truth's own plus this fraction (0.03: 3 points)."""


DEMO_GOALS = Goals("demo", centroid_ratio_max=0.7, psnr_margin_db=0.0, presence_f1_min=0.9, presence_f1_8x_min=None,
                   largest_part_min=0.9, garbage_over_truth_max=0.03)
QUALITY_GOALS = Goals("quality", centroid_ratio_max=0.5, psnr_margin_db=2.0, presence_f1_min=0.95,
                      presence_f1_8x_min=0.9, largest_part_min=0.95, garbage_over_truth_max=0.02)
GOALS: tuple[Goals, ...] = (DEMO_GOALS, QUALITY_GOALS)
"""The tiers every report checks, in order."""
GOAL_HORIZON = 4
"""Clip lengths generated over which F1, largest part and garbage are judged (fewer when k is smaller)."""

FRAME_METRICS: tuple[str, ...] = ("mse", "psnr", "garbage", "presence_f1", "centroid_error", "largest_part")
"""Per-frame curves of every method (the last four only on synthetic scenes)."""


# ----------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class ObjectFigures:
    """Object metrics over a range of frames (synthetic scenes only)."""

    garbage: float
    """Fraction of pixels near no scene colour."""
    presence_f1: float
    """Colour-presence F1 against the truth, pooled over clips, frames and colours."""
    centroid_error: float
    """Pixels between generated and true centroids of the colours present in both; NaN: none shared."""
    largest_part: float
    """Per colour present, the share of its pixels in its largest connected part (1: solid shapes)."""


@dataclass(frozen=True)
class RangeFigures:
    """Every figure over frames [start, end) of all clips."""

    frames: tuple[int, int]
    """[start, end) frame indices."""
    mse: float
    psnr: float
    objects: ObjectFigures | None = None
    """None without scenes."""
    frechet: dict[str, float] = field(default_factory=dict)
    """Fréchet distance to the truth by feature name (per chunk; by multiple: the mean of the first m)."""

    def to_json(self) -> dict[str, Any]:
        objects = dataclasses.asdict(self.objects) if self.objects is not None else {}
        return {"frames": list(self.frames), "mse": self.mse, "psnr": self.psnr, **objects, **self.frechet}


@dataclass(frozen=True)
class FrameCurves:
    """One value per frame (prompt included): means over clips; presence F1 pooled over clips and colours.
    The object curves are None without scenes."""

    mse: list[float]
    psnr: list[float]
    garbage: list[float] | None = None
    presence_f1: list[float] | None = None
    centroid_error: list[float] | None = None
    largest_part: list[float] | None = None

    def to_json(self) -> dict[str, list[float]]:
        """The curves there are, by metric name (in FRAME_METRICS order)."""
        return {name: curve for name in FRAME_METRICS if (curve := getattr(self, name)) is not None}


@dataclass(frozen=True)
class MethodFigures:
    """One method's figures (a model, or the copy_last baseline)."""

    per_frame: FrameCurves
    per_chunk: list[RangeFigures]
    """Step-metrics: chunk j holds generated frames [P + j*L, P + (j+1)*L)."""
    by_multiple: list[RangeFigures]
    """Entry m-1: the first m*L generated frames, m = 1..k."""

    def to_json(self) -> dict[str, Any]:
        return {"per_frame": self.per_frame.to_json(),
                "per_chunk": [{"chunk": j, **c.to_json()} for j, c in enumerate(self.per_chunk)],
                "by_multiple": [{"multiple": m, **r.to_json()} for m, r in enumerate(self.by_multiple, 1)]}


@dataclass(frozen=True)
class TruthFigures:
    """The truth's own object figures: mp4 chroma bleeding at shape edges is the floor of garbage."""

    per_frame_garbage: list[float]
    per_chunk_garbage: list[float]
    garbage: float
    """Over the whole continuation."""
    largest_part: float
    """Over the whole continuation."""

    def to_json(self, chunks: list[tuple[int, int]]) -> dict[str, Any]:
        return {"per_frame": {"garbage": self.per_frame_garbage},
                "per_chunk": [{"frames": list(c), "garbage": g} for c, g in zip(chunks, self.per_chunk_garbage,
                                                                                strict=True)],
                "garbage": self.garbage, "largest_part": self.largest_part}


# ----------------------------------------------------------------------------- the summary


@dataclass(frozen=True)
class GoalChecks:
    """Which goals of one tier a method meets; presence_f1_8x None where the tier has no such goal or the
    continuation is shorter than 8 clip lengths."""

    centroid: bool
    psnr: bool
    presence_f1: bool
    presence_f1_8x: bool | None
    largest_part: bool
    garbage: bool

    @property
    def all(self) -> bool:
        return all(v is not False for v in dataclasses.asdict(self).values())

    def to_json(self) -> dict[str, bool | None]:
        return {**dataclasses.asdict(self), "all": self.all}


@dataclass(frozen=True)
class ObjectSummary:
    """A method's goal figures on synthetic scenes."""

    horizon: int
    """The clip lengths over which presence F1, garbage and largest part are measured: min(4, k)."""
    presence_f1: float
    """At the horizon."""
    presence_f1_8x: float | None
    """Over 8 clip lengths (None when fewer were generated)."""
    garbage: float
    """At the horizon."""
    largest_part: float
    """At the horizon."""
    centroid_error_first_clip: float
    copy_last_centroid_error_first_clip: float
    centroid_ratio_first_clip: float
    """centroid_error_first_clip / copy_last's (NaN when copy_last's is 0)."""
    meets: dict[str, GoalChecks]
    """By tier (Goals.tier)."""


@dataclass(frozen=True)
class MethodSummary:
    psnr: float
    """Over the whole continuation."""
    psnr_first_clip: float
    """Over the first clip length."""
    mse: float
    """Over the whole continuation."""
    frechet_last_chunk: dict[str, float]
    """Fréchet distances of the last chunk by feature name."""
    objects: ObjectSummary | None
    """None without scenes."""

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"psnr": self.psnr, "psnr_first_clip": self.psnr_first_clip, "mse": self.mse,
                               **{f"{name}_last_chunk": v for name, v in self.frechet_last_chunk.items()}}
        if self.objects is not None:
            row |= {f.name: getattr(self.objects, f.name) for f in dataclasses.fields(ObjectSummary) if f.name != "meets"}
            row["meets"] = {tier: checks.to_json() for tier, checks in self.objects.meets.items()}
        return row


@dataclass(frozen=True)
class Summary:
    """The goal figures of every method against copy_last."""

    whole: tuple[int, int]
    """[P, P + k*L): the whole continuation."""
    first_clip: tuple[int, int]
    """[P, P + L): the first clip length."""
    truth_garbage: float | None
    """At the goal horizon (GOAL_HORIZON clip lengths, or the whole continuation when shorter)."""
    truth_largest_part: float | None
    """Over the whole continuation."""
    methods: dict[str, MethodSummary]

    def to_json(self) -> dict[str, Any]:
        return {"goals": {g.tier: dataclasses.asdict(g) for g in GOALS},
                "whole": list(self.whole), "first_clip": list(self.first_clip),
                "truth_garbage": self.truth_garbage, "truth_largest_part": self.truth_largest_part,
                "methods": {name: row.to_json() for name, row in self.methods.items()}}


# ----------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Source:
    """Where vidgpt-eval's figures come from."""

    export: str
    step: int | None
    weights: str | None
    truth: str
    """"synthetic scenes, seed S" or "latent dataset PATH"."""
    conditioning: str
    kv_cache: bool
    temporal: str
    eta: float | None = None
    """The sampler's stochasticity (`--eta`, else the export's [diffusion] ddim_eta)."""


@dataclass
class Report:
    """Every figure of one evaluation; `to_json()` is report.json."""

    spec: EvalSpec
    clips: int
    frame_size: tuple[int, int]
    frechet_metrics: list[str]
    """Fréchet distance names of every chunk entry (frechet_pixstat, and fvd_i3d with an I3D)."""
    methods: dict[str, MethodFigures]
    """The generated video sets, then copy_last."""
    truth: TruthFigures | None = None
    """Synthetic scenes only."""
    conditioning: str | None = None
    """In-process evaluations: "captions" or "unconditional"."""
    files: dict[str, str] | None = None
    """In-process evaluations with an output directory: report, plot and sheet paths."""
    source: Source | None = None
    """vidgpt-eval's provenance."""

    @property
    def frames(self) -> int:
        return self.spec.total_frames

    @property
    def prompt_frames(self) -> int:
        return self.spec.sampling.prompt_frames

    @property
    def clip_len(self) -> int:
        return self.spec.clip_len

    @property
    def multiples(self) -> int:
        return self.spec.multiples

    @property
    def object_metrics(self) -> bool:
        """Whether the object metrics were measured (synthetic scenes)."""
        return self.truth is not None

    @property
    def chunks(self) -> list[tuple[int, int]]:
        return [self.spec.chunk_range(j) for j in range(self.multiples)]

    @property
    def summary(self) -> Summary:
        return summarize(self)

    def to_json(self) -> dict[str, Any]:
        """report.json's object (strict JSON: NaN and inf are None)."""
        out: dict[str, Any] = {
            "spec": self.spec.to_json(),
            "frames": self.frames, "prompt_frames": self.prompt_frames, "clip_len": self.clip_len,
            "multiples": self.multiples, "clips": self.clips, "frame_size": list(self.frame_size),
            "object_metrics": self.object_metrics, "frechet_metrics": list(self.frechet_metrics),
            "chunks": [list(c) for c in self.chunks],
            "methods": {name: method.to_json() for name, method in self.methods.items()},
        }
        if self.truth is not None:
            out["truth"] = self.truth.to_json(self.chunks)
        out["summary"] = self.summary.to_json()
        if self.conditioning is not None:
            out["conditioning"] = self.conditioning
        if self.files is not None:
            out["files"] = dict(self.files)
        if self.source is not None:
            out["source"] = dataclasses.asdict(self.source)
        return json_ready(out)


def check_goals(goals: Goals, o: ObjectSummary, psnr_first_clip: float, copy_last_psnr_first_clip: float,
                truth_garbage: float) -> GoalChecks:
    """One tier's checks of a method's figures (NaN figures fail)."""
    f1_8x = None
    if goals.presence_f1_8x_min is not None and o.presence_f1_8x is not None:
        f1_8x = bool(o.presence_f1_8x >= goals.presence_f1_8x_min)
    return GoalChecks(
        centroid=bool(o.centroid_error_first_clip <= goals.centroid_ratio_max * o.copy_last_centroid_error_first_clip),
        psnr=bool(psnr_first_clip > copy_last_psnr_first_clip + goals.psnr_margin_db),
        presence_f1=bool(o.presence_f1 >= goals.presence_f1_min),
        presence_f1_8x=f1_8x,
        largest_part=bool(o.largest_part >= goals.largest_part_min),
        garbage=bool(o.garbage <= truth_garbage + goals.garbage_over_truth_max),
    )


def summarize(report: Report) -> Summary:
    """The goal figures of every method against copy_last (object figures None without scenes)."""
    P = report.prompt_frames
    horizon = min(GOAL_HORIZON, report.multiples)
    base_centroid, truth_garbage = math.nan, math.nan
    if report.object_metrics:
        base_objects = report.methods[COPY_LAST].by_multiple[0].objects
        assert base_objects is not None and report.truth is not None
        base_centroid = base_objects.centroid_error
        truth_garbage = float(np.mean(report.truth.per_chunk_garbage[:horizon]))
    base_psnr = report.methods[COPY_LAST].by_multiple[0].psnr
    methods: dict[str, MethodSummary] = {}
    for name, method in report.methods.items():
        whole, first, at = method.by_multiple[-1], method.by_multiple[0], method.by_multiple[horizon - 1]
        objects = None
        if at.objects is not None and first.objects is not None:
            eight = method.by_multiple[7].objects if len(method.by_multiple) >= 8 else None
            centroid = first.objects.centroid_error
            figures = ObjectSummary(
                horizon=horizon, presence_f1=at.objects.presence_f1,
                presence_f1_8x=eight.presence_f1 if eight is not None else None,
                garbage=at.objects.garbage, largest_part=at.objects.largest_part,
                centroid_error_first_clip=centroid, copy_last_centroid_error_first_clip=base_centroid,
                centroid_ratio_first_clip=centroid / base_centroid if base_centroid > 0 else math.nan, meets={})
            objects = dataclasses.replace(figures, meets={
                g.tier: check_goals(g, figures, first.psnr, base_psnr, truth_garbage) for g in GOALS})
        last_chunk = method.per_chunk[-1].frechet
        methods[name] = MethodSummary(psnr=whole.psnr, psnr_first_clip=first.psnr, mse=whole.mse,
                                      frechet_last_chunk={f: last_chunk[f] for f in report.frechet_metrics}, objects=objects)
    truth = report.truth
    return Summary(whole=(P, report.frames), first_clip=(P, P + report.clip_len),
                   truth_garbage=truth_garbage if truth is not None else None,
                   truth_largest_part=truth.largest_part if truth is not None else None, methods=methods)


def format_summary(report: Report) -> str:
    """A few lines: the goal figures of every method beside copy_last's, and which tiers' goals they meet."""
    s = report.summary
    base = s.methods[COPY_LAST]
    lines = []
    for name, row in s.methods.items():
        if name == COPY_LAST:
            continue
        lines.append(f"{name}: PSNR {row.psnr:.2f} dB (copy_last {base.psnr:.2f})")
        for fname in report.frechet_metrics:
            lines.append(f"  {fname}, last chunk: {row.frechet_last_chunk[fname]:.4g} "
                         f"(copy_last {base.frechet_last_chunk[fname]:.4g})")
        if row.objects is not None and base.objects is not None:
            lines += goal_table(json_ready(s.to_json()), name, report.clip_len)
    return "\n".join(lines)


def goal_table(summary: dict[str, Any], method: str, clip_len: int, tiers: tuple[Goals, ...] = GOALS) -> list[str]:
    """One line per goal figure from report.json's "summary" (`Summary.to_json`): the method's figure,
    copy_last's, and per tier the goal with met / NOT met."""
    row, base = summary["methods"][method], summary["methods"][COPY_LAST]
    mark = {True: "met", False: "NOT met", None: "not measured"}

    def num(v: float | None, fmt: str, scale: float = 1.0) -> str:  # None/NaN: undefined (no colour found)
        return "n/a" if v is None or not math.isfinite(v) else format(scale * v, fmt)

    def goals(name: str, describe: Callable[[Goals], str | None]) -> str:
        return "; ".join(f"{g.tier} {text}: {mark[row['meets'][g.tier][name]]}" for g in tiers
                         if (text := describe(g)) is not None)

    h, L = row["horizon"], clip_len
    lines = [
        f"  centroid error, first {L} frames: {num(row['centroid_error_first_clip'], '.2f')} px = "
        f"{num(row['centroid_ratio_first_clip'], '.2f')}x copy-last's {num(base['centroid_error_first_clip'], '.2f')} px"
        f"  ({goals('centroid', lambda g: f'<= {g.centroid_ratio_max:g}x')})",
        f"  PSNR, first {L} frames: {num(row['psnr_first_clip'], '.2f')} dB (copy-last "
        f"{num(base['psnr_first_clip'], '.2f')})  ({goals('psnr', lambda g: f'> copy-last + {g.psnr_margin_db:g} dB')})",
        f"  colour-presence F1, {h}x: {num(row['presence_f1'], '.3f')} (copy-last {num(base['presence_f1'], '.3f')})  "
        f"({goals('presence_f1', lambda g: f'>= {g.presence_f1_min:g}')})",
    ]
    if any(g.presence_f1_8x_min is not None for g in tiers):
        at_8x = goals("presence_f1_8x", lambda g: None if g.presence_f1_8x_min is None else f">= {g.presence_f1_8x_min:g}")
        lines.append(f"  colour-presence F1, 8x: {num(row['presence_f1_8x'], '.3f')} "
                     f"(copy-last {num(base['presence_f1_8x'], '.3f')})  ({at_8x})")
    lines += [
        f"  largest part per colour, {h}x: {num(row['largest_part'], '.3f')} (copy-last "
        f"{num(base['largest_part'], '.3f')}, truth {num(summary['truth_largest_part'], '.3f')}; 1 = solid shapes, "
        f"low = fragments)  ({goals('largest_part', lambda g: f'>= {g.largest_part_min:g}')})",
        f"  garbage pixels, {h}x: {num(row['garbage'], '.2f', 100)}% (copy-last {num(base['garbage'], '.2f', 100)}%, "
        f"truth {num(summary['truth_garbage'], '.2f', 100)}%)  "
        f"({goals('garbage', lambda g: f'<= truth + {100 * g.garbage_over_truth_max:g} pts')})",
    ]
    return lines


def json_ready(obj: Any) -> Any:
    """obj with NaN/inf as None and numpy scalars as Python numbers (strict JSON)."""
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
