"""Measuring a model's long videos against ground truth (the vidgpt-eval command is `cli`).

    spec = EvalSpec(sampling=SamplingSpec(prompt_frames=2, steps=20), clip_len=8, multiples=4)
    report = evaluate_model(model, diffusion, codec, spec, out_dir=Path("eval"))   # a Report
    json.dumps(report.to_json())                                                   # report.json

Modules: `spec` (what to evaluate), `truth` (held-out clips), `generation` (continuing them, the
copy_last baseline), `measure` (the figures), `report` (the typed report and its summary), `plots`
(metrics.png, sheet.png), `pipeline` (the whole evaluation of an in-process model, the files), `cli`.
"""

from vidgpt.evaluation.generation import continue_videos, copy_last, pad_text
from vidgpt.evaluation.measure import evaluate_videos, scene_object_stats
from vidgpt.evaluation.pipeline import evaluate_model, write_outputs
from vidgpt.evaluation.report import (
    COPY_LAST,
    DEMO_GOALS,
    GOALS,
    QUALITY_GOALS,
    Goals,
    Report,
    Summary,
    format_summary,
    goal_table,
    json_ready,
)
from vidgpt.evaluation.spec import EvalSpec
from vidgpt.evaluation.truth import DatasetTruth, dataset_truth, mp4_round_trip, synthetic_truth

__all__ = [
    "COPY_LAST", "DEMO_GOALS", "GOALS", "QUALITY_GOALS", "DatasetTruth", "EvalSpec", "Goals", "Report", "Summary",
    "continue_videos", "copy_last", "dataset_truth", "evaluate_model", "evaluate_videos", "format_summary", "goal_table",
    "json_ready", "mp4_round_trip", "pad_text", "scene_object_stats", "synthetic_truth", "write_outputs",
]
