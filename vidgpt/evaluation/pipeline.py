"""The whole evaluation of a model held in process (held-out scenes, continuation, report), and the
files of a report: report.json, metrics.png and sheet.png."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from data_pipeline.codecs import Codec
from data_pipeline.text import TextEncoder
from vidgpt.diffusion import Diffusion
from vidgpt.evaluation.generation import continue_videos, pad_text
from vidgpt.evaluation.measure import evaluate_videos
from vidgpt.evaluation.plots import write_contact_sheet, write_plot
from vidgpt.evaluation.report import Report
from vidgpt.evaluation.spec import EvalSpec
from vidgpt.evaluation.truth import synthetic_truth
from vidgpt.model import VidGPT


def write_outputs(report: Report, truth: np.ndarray, videos: Mapping[str, np.ndarray],
                  out_dir: Path) -> dict[str, Path]:
    """report.json, metrics.png and sheet.png (truth and `videos`, copy_last left out) in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"report": out_dir / "report.json", "plot": out_dir / "metrics.png", "sheet": out_dir / "sheet.png"}
    paths["report"].write_text(json.dumps(report.to_json(), indent=1, allow_nan=False) + "\n")
    write_plot(report, paths["plot"])
    write_contact_sheet(truth, videos, paths["sheet"], prompt_frames=report.prompt_frames)
    return paths


def evaluate_model(
    model: VidGPT,
    diffusion: Diffusion,
    codec: Codec,
    spec: EvalSpec,
    *,
    out_dir: Path | None = None,
    seed: int = 0,
    text_encoder: TextEncoder | None = None,
    i3d: torch.nn.Module | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """The whole synthetic evaluation of an in-process model: held-out scenes, continuation with
    spec.sampling, report (and its files in out_dir when given). text_encoder: conditions on the
    scenes' captions (None: unconditional)."""
    truth, scenes = synthetic_truth(spec)
    text = text_mask = None
    if text_encoder is not None and model.cfg.text_dim:
        text, text_mask = pad_text(text_encoder.encode([s.caption() for s in scenes]), model.cfg.text_len)
    videos = continue_videos(model, diffusion, codec, truth, spec, seed=seed, text=text, text_mask=text_mask,
                             progress=progress)
    report = evaluate_videos(truth, {"model": videos}, spec, scenes, i3d)
    report.conditioning = "captions" if text is not None else "unconditional"
    if out_dir is not None:
        report.files = {k: str(v) for k, v in write_outputs(report, truth, {"model": videos}, out_dir).items()}
    return report
