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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vidgpt.evaluation.spec import EvalSpec

COPY_LAST = "copy_last"
"""Name of the baseline that repeats the last prompt frame."""

GOALS: dict[str, float] = {"presence_f1_min": 0.9, "garbage_max": 0.05, "centroid_ratio_max": 0.5}
"""The demo's goals: presence F1 and garbage over the whole continuation; centroid error over the
first clip length as a fraction of copy_last's."""

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
    """Which of GOALS a method meets."""

    presence_f1: bool
    garbage: bool
    centroid: bool

    @property
    def all(self) -> bool:
        return self.presence_f1 and self.garbage and self.centroid

    def to_json(self) -> dict[str, bool]:
        return {"presence_f1": self.presence_f1, "garbage": self.garbage, "centroid": self.centroid, "all": self.all}


@dataclass(frozen=True)
class ObjectSummary:
    """A method's goal figures on synthetic scenes."""

    presence_f1: float
    """Over the whole continuation."""
    garbage: float
    """Over the whole continuation."""
    centroid_error_first_clip: float
    largest_part: float
    """Over the whole continuation."""
    copy_last_centroid_error_first_clip: float
    centroid_ratio_first_clip: float
    """centroid_error_first_clip / copy_last's (NaN when copy_last's is 0)."""
    meets: GoalChecks


@dataclass(frozen=True)
class MethodSummary:
    psnr: float
    """Over the whole continuation."""
    mse: float
    """Over the whole continuation."""
    frechet_last_chunk: dict[str, float]
    """Fréchet distances of the last chunk by feature name."""
    objects: ObjectSummary | None
    """None without scenes."""

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"psnr": self.psnr, "mse": self.mse,
                               **{f"{name}_last_chunk": v for name, v in self.frechet_last_chunk.items()}}
        if self.objects is not None:
            row |= {f.name: getattr(self.objects, f.name) for f in dataclasses.fields(ObjectSummary) if f.name != "meets"}
            row["meets"] = self.objects.meets.to_json()
        return row


@dataclass(frozen=True)
class Summary:
    """The goal figures of every method against copy_last."""

    whole: tuple[int, int]
    """[P, P + k*L): the whole continuation."""
    first_clip: tuple[int, int]
    """[P, P + L): the first clip length."""
    truth_garbage: float | None
    truth_largest_part: float | None
    methods: dict[str, MethodSummary]

    def to_json(self) -> dict[str, Any]:
        return {"goals": dict(GOALS), "whole": list(self.whole), "first_clip": list(self.first_clip),
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


def summarize(report: Report) -> Summary:
    """The goal figures of every method against copy_last (object figures None without scenes)."""
    P = report.prompt_frames
    base_centroid = math.nan
    if report.object_metrics:
        base_objects = report.methods[COPY_LAST].by_multiple[0].objects
        assert base_objects is not None
        base_centroid = base_objects.centroid_error
    methods: dict[str, MethodSummary] = {}
    for name, method in report.methods.items():
        whole, first = method.by_multiple[-1], method.by_multiple[0]
        objects = None
        if whole.objects is not None and first.objects is not None:
            f1, garbage, centroid = whole.objects.presence_f1, whole.objects.garbage, first.objects.centroid_error
            objects = ObjectSummary(
                presence_f1=f1, garbage=garbage, centroid_error_first_clip=centroid,
                largest_part=whole.objects.largest_part, copy_last_centroid_error_first_clip=base_centroid,
                centroid_ratio_first_clip=centroid / base_centroid if base_centroid > 0 else math.nan,
                meets=GoalChecks(presence_f1=bool(f1 >= GOALS["presence_f1_min"]),
                                 garbage=bool(garbage <= GOALS["garbage_max"]),
                                 centroid=bool(centroid <= GOALS["centroid_ratio_max"] * base_centroid)),
            )
        last_chunk = method.per_chunk[-1].frechet
        methods[name] = MethodSummary(psnr=whole.psnr, mse=whole.mse,
                                      frechet_last_chunk={f: last_chunk[f] for f in report.frechet_metrics}, objects=objects)
    truth = report.truth
    return Summary(whole=(P, report.frames), first_clip=(P, P + report.clip_len),
                   truth_garbage=truth.garbage if truth is not None else None,
                   truth_largest_part=truth.largest_part if truth is not None else None, methods=methods)


def format_summary(report: Report) -> str:
    """A few lines: the goal figures of every method beside copy_last's."""
    s = report.summary
    base = s.methods[COPY_LAST]
    ok = {True: "ok", False: "MISSED"}
    lines = []
    for name, row in s.methods.items():
        if name == COPY_LAST:
            continue
        lines.append(f"{name}: PSNR {row.psnr:.2f} dB (copy_last {base.psnr:.2f})")
        for fname in report.frechet_metrics:
            lines.append(f"  {fname}, last chunk: {row.frechet_last_chunk[fname]:.4g} "
                         f"(copy_last {base.frechet_last_chunk[fname]:.4g})")
        o, b = row.objects, base.objects
        if o is None or b is None:
            continue
        lines += [
            f"  presence F1, whole {report.multiples}x continuation: {o.presence_f1:.3f} "
            f"(copy_last {b.presence_f1:.3f}; goal >= {GOALS['presence_f1_min']}) {ok[o.meets.presence_f1]}",
            f"  garbage, whole continuation: {100 * o.garbage:.2f}% (copy_last {100 * b.garbage:.2f}%, "
            f"truth floor {100 * s.truth_garbage:.2f}%; goal <= {100 * GOALS['garbage_max']:.0f}%) "
            f"{ok[o.meets.garbage]}",
            f"  centroid error, first clip length: {o.centroid_error_first_clip:.2f} px (copy_last "
            f"{o.copy_last_centroid_error_first_clip:.2f} px; goal <= {GOALS['centroid_ratio_max']}x) "
            f"{ok[o.meets.centroid]}",
            f"  largest part per colour, whole continuation: {o.largest_part:.3f} (copy_last "
            f"{b.largest_part:.3f}, truth {s.truth_largest_part:.3f}; 1 = solid shapes, low = fragments)",
        ]
    return "\n".join(lines)


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
