"""vidgpt-eval: the metrics on scenes with known answers, the copy_last baseline, the typed report and
its report.json, the codec and text-encoder chooser, and the CLI end to end on a tiny random model
(synthetic truth and a latent dataset)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from data_pipeline.codecs import build_codec
from data_pipeline.index import write_index
from data_pipeline.shards import Sample, ShardBuilder
from data_pipeline.synthetic import MovingShape, Scene, synthetic_scene
from data_pipeline.text import save_tiny_text_encoder
from vidgpt import metrics
from vidgpt.diffusion import RectifiedFlow
from vidgpt.evaluation import COPY_LAST, EvalSpec, evaluate_model, evaluate_videos, mp4_round_trip, synthetic_truth
from vidgpt.evaluation.cli import main
from vidgpt.evaluation.report import (
    FrameCurves,
    GoalChecks,
    MethodFigures,
    ObjectFigures,
    RangeFigures,
    Report,
    Source,
    TruthFigures,
)
from vidgpt.export import CONFIG, WEIGHTS
from vidgpt.latent_space import codec_for_export, codec_for_index, text_encoder_for
from vidgpt.model import FLAVORS, VidGPT
from vidgpt.sampling import SamplingSpec
from vidgpt.testing import randomize_weights_

SIZE = 32


def _static_scene(x: float = 10.0, y: float = 12.0, vx: float = 0.0, vy: float = 0.0) -> Scene:
    """A red square and a blue circle on a dark background; the square moves at (vx, vy)."""
    return Scene(size=SIZE, background=(10, 20, 30), shapes=(
        MovingShape("square", "red", 3.0, x, y, vx, vy),
        MovingShape("circle", "blue", 4.0, 22.0, 22.0, 0.0, 0.0),
    ))


def _stats(frames: np.ndarray, scene: Scene) -> metrics.ObjectStats:
    return metrics.object_stats(metrics.classify(frames, scene.background))


# ----------------------------------------------------------------------------- metrics


def test_identical_videos_score_perfectly() -> None:
    scene = synthetic_scene(3, size=SIZE, seed=1000)
    frames = scene.render(6)
    assert np.all(metrics.mse(frames, frames) == 0)
    assert np.all(metrics.psnr(frames, frames) == metrics.PSNR_CAP)
    stats = _stats(frames, scene)
    assert np.all(stats.garbage == 0)
    assert stats.presence.sum() == 6 * len(scene.shapes)
    assert metrics.presence_f1(stats.presence, stats.presence) == 1.0
    assert np.all(metrics.centroid_error(stats, stats) == 0)


def test_psnr_of_a_known_error() -> None:
    a = np.zeros((1, 4, 4, 3), np.uint8)
    b = np.full((1, 4, 4, 3), 51, np.uint8)  # 0.2 everywhere: mse 0.04, psnr = -10 log10(0.04)
    assert metrics.mse(a, b)[0] == pytest.approx(0.04)
    assert metrics.psnr(a, b)[0] == pytest.approx(-10 * np.log10(0.04))


@pytest.mark.parametrize("shift", [(3, 0), (0, -2), (4, 3)])
def test_a_shifted_shape_gives_that_centroid_error(shift: tuple[int, int]) -> None:
    truth_scene = _static_scene()
    truth = truth_scene.render(2)
    moved = _static_scene(x=10.0 + shift[0], y=12.0 + shift[1]).render(2)  # only the red square moves
    error = metrics.centroid_error(_stats(moved, truth_scene), _stats(truth, truth_scene))
    # two shared colours: red off by |shift|, blue exact -> mean |shift| / 2
    assert error == pytest.approx(np.full(2, np.hypot(*shift) / 2))

    rolled = np.roll(truth, shift=(shift[1], shift[0]), axis=(1, 2))  # every shape moves
    error = metrics.centroid_error(_stats(rolled, truth_scene), _stats(truth, truth_scene))
    assert error == pytest.approx(np.full(2, np.hypot(*shift)))


def test_a_missing_colour_lowers_f1_not_centroids() -> None:
    scene = _static_scene()
    truth = scene.render(1)
    only_blue = Scene(SIZE, scene.background, scene.shapes[1:]).render(1)
    got, want = _stats(only_blue, scene), _stats(truth, scene)
    assert metrics.presence_f1(got.presence, want.presence) == pytest.approx(2 / 3)  # tp 1, fn 1
    assert metrics.centroid_error(got, want)[0] == pytest.approx(0.0)


def test_largest_part_tells_a_shape_from_its_fragments() -> None:
    labels = np.zeros((3, 16, 16), dtype=np.int8)
    labels[0, 2:6, 2:6] = 1  # one solid square
    for y, x in ((1, 1), (1, 10), (10, 1), (10, 10)):  # the same colour in 4 separate 2x2 pieces
        labels[1, y : y + 2, x : x + 2] = 1
    labels[1, 5:9, 5] = 2  # a bar and a pixel touching it diagonally: one 8-connected part
    labels[1, 9, 6] = 2
    labels[2, 0:3, 0:3] = 3  # 9 + 3 pixels in two parts; a colour below min_pixels is absent (NaN)
    labels[2, 8, 8:11] = 3
    labels[2, 14, 14] = 4
    parts = metrics.largest_part(labels, min_pixels=3)
    assert parts.shape == (3, len(metrics.COLOURS))
    assert parts[0, 0] == 1.0 and parts[1, 0] == 0.25 and parts[1, 1] == 1.0 and parts[2, 2] == 0.75
    assert np.isnan(parts[0, 1]) and np.isnan(parts[2, 3])
    # a snake-shaped component needs many propagation rounds: still one part
    snake = np.zeros((1, 9, 9), dtype=bool)
    snake[0, ::2, :] = True
    snake[0, 1::4, -1] = snake[0, 3::4, 0] = True
    comp = metrics.component_labels(snake)
    assert len(np.unique(comp[comp >= 0])) == 1 and (comp[~snake] == -1).all()


def test_random_noise_is_mostly_garbage() -> None:
    scene = synthetic_scene(0, size=SIZE, seed=1000)
    noise = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    got, want = _stats(noise, scene), _stats(scene.render(4), scene)
    # about a quarter of the RGB cube is near neither a reference nor a blend of the background and one
    assert np.all(got.garbage > 0.15) and np.all(want.garbage == 0)
    hard = metrics.object_stats(metrics.classify(noise, scene.background, blend_tolerance=0))
    assert np.all(hard.garbage > 0.5) and np.all(hard.garbage > got.garbage)
    assert metrics.presence_f1(got.presence, want.presence) < 0.7  # noise "contains" every colour


def test_mp4_round_trip_truth_has_little_garbage() -> None:
    scenes = [synthetic_scene(i, size=SIZE, seed=1000, speed=2.5) for i in range(4)]
    videos = [mp4_round_trip(s.render(8, supersample=4), 8.0) for s in scenes]
    hard = [metrics.object_stats(metrics.classify(v, s.background, blend_tolerance=0)).garbage.mean()
            for v, s in zip(videos, scenes, strict=True)]
    blend_aware = [_stats(v, s).garbage.mean() for v, s in zip(videos, scenes, strict=True)]
    assert 0.01 < np.mean(hard) < 0.06  # edge blends and chroma bleeding counted as garbage: a few percent
    assert np.mean(blend_aware) < np.mean(hard) / 4  # ... but they are blends of a shape and the background


def test_anti_aliased_edges_are_not_garbage_but_noise_is() -> None:
    background = (10, 20, 30)
    red, yellow = np.array(metrics.PALETTE["red"]), np.array(metrics.PALETTE["yellow"])
    frame = np.empty((1, 3, 10, 3), np.uint8)
    alphas = np.linspace(0.0, 1.0, 10)[:, None]  # coverages of a pixel by the shape, 0 to 1
    frame[0, 0] = np.rint(alphas * red + (1 - alphas) * np.array(background))
    frame[0, 1] = np.rint(alphas * yellow + (1 - alphas) * np.array(background))
    frame[0, 2] = (0, 160, 160)  # teal: near no reference and no blend of one with the background
    labels = metrics.classify(frame, background)
    hard = metrics.classify(frame, background, blend_tolerance=0)
    red_label, yellow_label = metrics.COLOURS.index("red") + 1, metrics.COLOURS.index("yellow") + 1
    for row, label in ((0, red_label), (1, yellow_label)):
        # the ends keep their colours; in between, where no reference is near, the old metric saw garbage and
        # this one sees an edge; a mid blend is never taken for another colour (half yellow is nearest to green)
        assert labels[0, row, 0] == metrics.BACKGROUND and labels[0, row, -1] == label
        middle = hard[0, row] == metrics.GARBAGE
        assert middle[4:6].all() and (labels[0, row][middle] == metrics.EDGE).all()
        assert set(labels[0, row].tolist()) <= {metrics.BACKGROUND, label, metrics.EDGE}
        assert np.array_equal(labels[0, row][~middle], hard[0, row][~middle])
    assert (labels[0, 2] == metrics.GARBAGE).all()
    assert metrics.blend_distance(frame[0, 0], background).max() < 1.0
    assert metrics.blend_distance(frame[0, 2, :1], background)[0] > metrics.DEFAULT_BLEND_TOLERANCE
    stats = metrics.object_stats(labels, min_pixels=1)
    assert stats.garbage[0] == pytest.approx(10 / 30)  # only the teal row; edges count as no colour either
    assert stats.presence[0, red_label - 1] and stats.presence[0, yellow_label - 1]
    assert not stats.presence[0, metrics.COLOURS.index("green")]


def test_frechet_distance() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 5)) @ rng.standard_normal((5, 5))  # correlated features
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    assert metrics.frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    distances = [metrics.frechet_distance(a, a + s * shift) for s in (0.5, 1.0, 2.0)]
    assert distances == sorted(distances) and distances[0] > 0
    b = rng.standard_normal((64, 5)) * 3  # a different spread also counts
    assert metrics.frechet_distance(a, b) > metrics.frechet_distance(a, a + 0.01)


def test_pixstat_features_see_motion() -> None:
    still = _static_scene().render(8)[None]
    moving = _static_scene(vx=1.5).render(8)[None]
    fs, fm = metrics.pixstat_features(still), metrics.pixstat_features(moving)
    assert fs.shape == (1, 7 * 16)
    g = 16
    assert np.all(fs[0, -g:] == 0) and fm[0, -g:].max() > 0  # motion energy
    assert metrics.frechet_distance(fs, fm) > 0


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # the I3D convention is TorchScript
def test_i3d_features_follow_the_torchscript_convention(tmp_path: Path) -> None:
    class TinyI3D(torch.nn.Module):  # the call signature of StyleGAN-V's i3d_torchscript.pt
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(3, 400)

        def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True,
                    return_features: bool = False) -> torch.Tensor:
            assert x.dim() == 5 and x.size(1) == 3  # (N, 3, T, H, W)
            assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
            return self.proj(x.mean(dim=(2, 3, 4)))

    path = tmp_path / "i3d.pt"
    torch.jit.script(TinyI3D()).save(str(path))
    model = torch.jit.load(str(path))
    chunks = synthetic_truth(EvalSpec(clip_len=4, multiples=1, num_clips=3))[0][:, :4]
    feats = metrics.i3d_features(model, chunks, batch_size=2)
    assert feats.shape == (3, 400) and np.isfinite(feats).all()


# ----------------------------------------------------------------------------- the baseline and the report


def _spec(steps: int = 25, **kw: object) -> EvalSpec:
    return EvalSpec(**{"sampling": SamplingSpec(prompt_frames=2, steps=steps), "clip_len": 4, "multiples": 2,
                       "num_clips": 2, "size": SIZE, **kw})


def test_copy_last_is_perfect_on_a_static_scene() -> None:
    spec = _spec()
    scenes = [_static_scene(), _static_scene(x=20.0, y=8.0)]
    truth = np.stack([s.render(spec.total_frames) for s in scenes])
    report = evaluate_videos(truth, {}, spec, scenes)
    base = report.methods[COPY_LAST]
    assert base.by_multiple[-1].mse == 0
    assert base.by_multiple[-1].objects.presence_f1 == 1
    assert base.by_multiple[-1].objects.centroid_error == 0
    assert base.per_chunk[-1].frechet["frechet_pixstat"] == pytest.approx(0, abs=1e-9)


def test_copy_last_misses_motion_and_the_report_says_so() -> None:
    spec = _spec()
    scenes = [_static_scene(vx=1.0, vy=0.5), _static_scene(vx=-1.0)]
    truth = np.stack([s.render(spec.total_frames) for s in scenes])
    report = evaluate_videos(truth, {"oracle": truth.copy()}, spec, scenes)
    base = report.methods[COPY_LAST]
    P = spec.sampling.prompt_frames
    errors = base.per_frame.centroid_error
    assert errors[:P] == [0, 0]
    assert all(e > 0 for e in errors[P:])
    assert errors[-1] > errors[P]  # it grows as the square moves on
    assert base.by_multiple[0].objects.centroid_error > 0
    summary = report.summary.methods
    every = GoalChecks(centroid=True, psnr=True, presence_f1=True, presence_f1_8x=None, largest_part=True,
                       garbage=True)
    assert summary["oracle"].objects.meets == {"demo": every, "quality": every}  # 2 multiples: no 8x figure
    assert summary["oracle"].objects.meets["quality"].all is True
    assert summary["oracle"].objects.centroid_ratio_first_clip == 0
    assert summary[COPY_LAST].objects.meets["demo"].centroid is False
    assert summary[COPY_LAST].objects.meets["demo"].psnr is False  # not above itself
    assert report.chunks == [(2, 6), (6, 10)]
    assert len(base.per_frame.psnr) == spec.total_frames
    as_json = report.to_json()
    assert as_json["summary"]["methods"]["oracle"]["meets"]["demo"] == {
        "centroid": True, "psnr": True, "presence_f1": True, "presence_f1_8x": None, "largest_part": True,
        "garbage": True, "all": True}
    assert as_json["chunks"] == [[2, 6], [6, 10]]


def test_report_to_json_has_the_report_json_layout() -> None:
    """A report built by hand: to_json() is strict JSON with report.json's keys and nesting, NaN as null."""
    spec = _spec()
    nan = float("nan")

    def method(mse: float) -> MethodFigures:
        objects = ObjectFigures(garbage=0.01, presence_f1=0.95, centroid_error=mse, largest_part=1.0)
        chunks = [RangeFigures(spec.chunk_range(j), mse, 30.0, objects, {"frechet_pixstat": 1.5}) for j in range(2)]
        by_multiple = [RangeFigures((2, 2 + 4 * m), mse, 30.0, objects, {"frechet_pixstat": 1.5}) for m in (1, 2)]
        curve = [mse] * spec.total_frames
        return MethodFigures(FrameCurves(curve, curve, curve, curve, [nan] * spec.total_frames, curve),
                             chunks, by_multiple)

    truth = TruthFigures(per_frame_garbage=[0.02] * spec.total_frames, per_chunk_garbage=[0.02, 0.03],
                         garbage=0.025, largest_part=1.0)
    report = Report(spec=spec, clips=2, frame_size=(SIZE, SIZE), frechet_metrics=["frechet_pixstat"],
                    methods={"model": method(1.0), COPY_LAST: method(2.0)}, truth=truth)
    report.source = Source(export="e", step=3, weights="ema", truth="synthetic scenes, seed 1000",
                           conditioning="unconditional", kv_cache=True, temporal="causal", eta=1.0)
    out = report.to_json()
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    assert list(out) == ["spec", "frames", "prompt_frames", "clip_len", "multiples", "clips", "frame_size",
                         "object_metrics", "frechet_metrics", "chunks", "methods", "truth", "summary", "source"]
    assert list(out["spec"]) == ["prompt_frames", "clip_len", "multiples", "chunk", "window", "sink", "steps",
                                 "context_scale", "num_clips", "synthetic_seed", "size", "fps", "tolerance",
                                 "blend_tolerance", "min_pixels"]
    assert out["spec"]["chunk"] == 2 and out["spec"]["window"] == 2 and out["spec"]["min_pixels"] is None
    assert (out["frames"], out["prompt_frames"], out["chunks"]) == (10, 2, [[2, 6], [6, 10]])
    model = out["methods"]["model"]
    assert list(model) == ["per_frame", "per_chunk", "by_multiple"]
    assert list(model["per_frame"]) == ["mse", "psnr", "garbage", "presence_f1", "centroid_error", "largest_part"]
    assert model["per_frame"]["centroid_error"] == [None] * 10  # NaN: undefined
    assert model["per_chunk"][1] == {"chunk": 1, "frames": [6, 10], "mse": 1.0, "psnr": 30.0, "garbage": 0.01,
                                     "presence_f1": 0.95, "centroid_error": 1.0, "largest_part": 1.0,
                                     "frechet_pixstat": 1.5}
    assert model["by_multiple"][0]["multiple"] == 1 and model["by_multiple"][1]["frames"] == [2, 10]
    assert out["truth"]["per_chunk"] == [{"frames": [2, 6], "garbage": 0.02}, {"frames": [6, 10], "garbage": 0.03}]
    summary = out["summary"]
    assert list(summary) == ["goals", "whole", "first_clip", "truth_garbage", "truth_largest_part", "methods"]
    row = summary["methods"]["model"]
    assert list(row) == ["psnr", "psnr_first_clip", "mse", "frechet_pixstat_last_chunk", "horizon", "presence_f1",
                         "presence_f1_8x", "garbage", "largest_part", "centroid_error_first_clip",
                         "copy_last_centroid_error_first_clip", "centroid_ratio_first_clip", "meets"]
    assert row["centroid_ratio_first_clip"] == 0.5 and row["horizon"] == 2 and row["presence_f1_8x"] is None
    assert summary["truth_garbage"] == pytest.approx(0.025)  # over the 2 chunks of the horizon
    # PSNR equal to copy-last's is not above it; F1 0.95 meets both tiers; ratio 0.5 meets both
    assert row["meets"]["demo"] == {"centroid": True, "psnr": False, "presence_f1": True, "presence_f1_8x": None,
                                    "largest_part": True, "garbage": True, "all": False}
    assert list(summary["goals"]) == ["demo", "quality"] and summary["goals"]["quality"]["psnr_margin_db"] == 2.0
    assert out["source"] == {"export": "e", "step": 3, "weights": "ema", "truth": "synthetic scenes, seed 1000",
                             "conditioning": "unconditional", "kv_cache": True, "temporal": "causal", "eta": 1.0}
    plain = Report(spec=spec, clips=2, frame_size=(SIZE, SIZE), frechet_metrics=[],  # dataset truth: no objects
                   methods={COPY_LAST: MethodFigures(FrameCurves([0.0] * 10, [100.0] * 10),
                                                     [RangeFigures((2, 6), 0.0, 100.0)] * 2,
                                                     [RangeFigures((2, 6), 0.0, 100.0)] * 2)}).to_json()
    assert "truth" not in plain and plain["object_metrics"] is False
    assert plain["summary"]["truth_garbage"] is None
    assert plain["summary"]["methods"][COPY_LAST] == {"psnr": 100.0, "psnr_first_clip": 100.0, "mse": 0.0}


def test_evaluate_model_in_process(tmp_path: Path) -> None:
    """The API the demo and the benchmark call with a model they hold (no export directory)."""
    torch.manual_seed(0)
    model = randomize_weights_(VidGPT(dataclasses.replace(FLAVORS["tiny"], in_channels=3, text_dim=0))).eval()
    spec = _spec(size=16, steps=2)
    lines: list[str] = []
    report = evaluate_model(model, RectifiedFlow(), build_codec("identity"), spec, out_dir=tmp_path / "eval",
                            progress=lines.append)
    assert set(report.files) == {"report", "plot", "sheet"}
    assert all(Path(f).is_file() for f in report.files.values())
    assert report.conditioning == "unconditional"
    assert lines[-1].endswith(f"{spec.generated_frames}/{spec.generated_frames} frames generated")
    model_row = report.summary.methods["model"].objects
    assert 0 <= model_row.presence_f1 <= 1 and 0 <= model_row.garbage <= 1
    written = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert written == {k: v for k, v in report.to_json().items() if k != "files"}  # files: known after writing


# ----------------------------------------------------------------------------- the command line


def _export(tmp_path: Path, clip_len: int = 4, text_dim: int = 0, prompt_min_len: int = 1) -> Path:
    """A tiny random 3-channel (identity codec) model, without text unless text_dim, exported as
    vidgpt-export does."""
    cfg = dataclasses.replace(FLAVORS["tiny"], in_channels=3, text_dim=text_dim)
    torch.manual_seed(0)
    model = randomize_weights_(VidGPT(cfg), seed=0)
    out = tmp_path / "export"
    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / WEIGHTS))
    info = {"model": dataclasses.asdict(cfg), "weights": "model", "step": 0, "source": "test",
            "data": {"num_frames": clip_len}, "diffusion": {"process": "flow", "prompt_min_len": prompt_min_len}}
    (out / CONFIG).write_text(json.dumps(info))
    return out


FAST = ["--clips", "2", "--multiples", "2", "--steps", "2", "--size", "16", "--prompt-frames", "2"]


def _check_outputs(out: Path, methods: set[str]) -> dict:
    report = json.loads((out / "report.json").read_text())
    assert set(report["methods"]) == methods
    for name in ("metrics.png", "sheet.png"):
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] >= 300 and image.size[1] >= 150
    return report


def test_cli_end_to_end_on_synthetic_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    assert main([str(_export(tmp_path)), "--out", str(out), *FAST]) == 0
    report = _check_outputs(out, {"model", COPY_LAST})
    assert report["frames"] == 2 + 2 * 4 and report["clips"] == 2 and report["frame_size"] == [16, 16]
    assert report["object_metrics"] is True and report["frechet_metrics"] == ["frechet_pixstat"]
    model = report["methods"]["model"]
    assert set(model["per_frame"]) == {"mse", "psnr", "garbage", "presence_f1", "centroid_error", "largest_part"}
    assert len(model["per_chunk"]) == 2 and len(model["by_multiple"]) == 2
    assert model["per_frame"]["mse"][:2] == [0, 0]  # identity codec: the prompt frames come back exactly
    summary = report["summary"]["methods"]["model"]
    assert {"presence_f1", "garbage", "centroid_error_first_clip", "centroid_ratio_first_clip", "meets"} <= set(summary)
    assert 0 <= report["summary"]["truth_garbage"] < 0.15
    assert report["source"]["kv_cache"] is True and report["source"]["conditioning"] == "unconditional"
    printed = capsys.readouterr().out
    assert "colour-presence F1, 2x" in printed and "centroid error, first 4 frames" in printed
    assert "demo <= 0.7x: " in printed and "quality > copy-last + 2 dB: " in printed
    assert str(out / "report.json") in printed


def test_cli_samples_as_the_run_config_says_unless_a_flag_does(tmp_path: Path) -> None:
    """vidgpt-eval's sampling flags start from the export's [eval.sampling] (the run's one declaration)."""
    export = _export(tmp_path)
    info = json.loads((export / CONFIG).read_text())
    info["eval"] = {"sampling": {"chunk": 1, "window": 3, "steps": 3}}
    (export / CONFIG).write_text(json.dumps(info))
    fast = ["--clips", "2", "--multiples", "1", "--size", "16"]
    assert main([str(export), "--out", str(tmp_path / "a"), *fast]) == 0
    spec = json.loads((tmp_path / "a" / "report.json").read_text())["spec"]
    assert (spec["chunk"], spec["window"], spec["steps"], spec["prompt_frames"]) == (1, 3, 3, 2)
    assert main([str(export), "--out", str(tmp_path / "b"), *fast, "--chunk", "2", "--steps", "2"]) == 0
    spec = json.loads((tmp_path / "b" / "report.json").read_text())["spec"]
    assert (spec["chunk"], spec["window"], spec["steps"]) == (2, 3, 2)
    info["eval"] = {"sampling": {"chunk": 0}}
    (export / CONFIG).write_text(json.dumps(info))
    with pytest.raises(SystemExit):
        main([str(export), "--out", str(tmp_path / "c"), *fast])


def test_cli_context_guidance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--context-scale reaches the sampler (the videos change, the report records it) for a model trained
    with 0-frame prompts, and is refused in one line for one that was not."""
    export = _export(tmp_path, prompt_min_len=0)
    for scale in ("1", "3"):
        assert main([str(export), "--out", str(tmp_path / scale), *FAST, "--context-scale", scale]) == 0
    plain, guided = (json.loads((tmp_path / s / "report.json").read_text()) for s in ("1", "3"))
    assert (plain["spec"]["context_scale"], guided["spec"]["context_scale"]) == (1.0, 3.0)
    assert "context guidance 3" in capsys.readouterr().out
    assert plain["methods"]["model"]["per_frame"]["mse"] != guided["methods"]["model"]["per_frame"]["mse"]
    assert plain["methods"]["copy_last"] == guided["methods"]["copy_last"]
    with pytest.raises(SystemExit) as exc:
        main([str(_export(tmp_path / "prompted")), "--out", str(tmp_path / "no"), *FAST, "--context-scale", "2"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert "needs a model trained with 0-frame prompts" in err and "prompt_min_len = 0" in err
    with pytest.raises(SystemExit) as exc:
        main([str(export), "--out", str(tmp_path / "no"), *FAST, "--context-scale", "0"])
    assert exc.value.code == 2 and "context_scale must be a number > 0" in capsys.readouterr().err


def test_cli_eta_overrides_the_exports_sampler_noise(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--eta replaces the export's [diffusion] ddim_eta (here 0, deterministic): the videos change, the report
    records it, and a value the process does not take (flow: above 1) is refused in one line."""
    export = _export(tmp_path)
    for eta in (None, "1"):
        flag = [] if eta is None else ["--eta", eta]
        assert main([str(export), "--out", str(tmp_path / str(eta)), *FAST, *flag]) == 0
    plain, noisy = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("None", "1"))
    assert (plain["source"]["eta"], noisy["source"]["eta"]) == (0.0, 1.0)
    assert "eta 1," in capsys.readouterr().out
    assert plain["methods"]["model"]["per_frame"]["mse"] != noisy["methods"]["model"]["per_frame"]["mse"]
    with pytest.raises(SystemExit) as exc:
        main([str(export), "--out", str(tmp_path / "no"), *FAST, "--eta", "1.5"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert "--eta 1.5" in err and "flow" in err


def test_cli_without_the_kv_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    assert main([str(_export(tmp_path)), "--out", str(out), *FAST, "--no-kv-cache"]) == 0
    assert json.loads((out / "report.json").read_text())["source"]["kv_cache"] is False
    assert "no cache" in capsys.readouterr().out


def _latent_dataset(root: Path, frames: int, clips: int = 2, text_dim: int = 0) -> Path:
    """Identity-codec latents of synthetic 16px scenes (with random caption embeddings when
    text_dim), one shard and index.json, as vidgpt-encode writes."""
    codec = build_codec("identity")
    rng = np.random.default_rng(0)
    builder = ShardBuilder(root / "staging.tar", "shards/part-000.tar")
    for i in range(clips):
        video = synthetic_scene(i, size=16, seed=7).render(frames)
        text = rng.standard_normal((3 + i, text_dim)).astype(np.float16) if text_dim else None
        builder.add(Sample(f"clip{i}", codec.encode(video), {"source": f"clip{i}"}, caption=f"clip {i}", text=text))
    info = builder.close()
    (root / "shards").mkdir(parents=True)
    builder.local_path.rename(root / "shards" / "part-000.tar")
    write_index(str(root), [info.to_json()], {"codec": codec.describe(), "size": [16, 16], "num_inputs": clips})
    return root


def test_the_codec_of_a_dataset_and_of_an_export(tmp_path: Path) -> None:
    """One chooser: the dataset index's codec; for an export, its training dataset's when readable, else
    identity for a pixel model, else a one-line error."""
    data = _latent_dataset(tmp_path / "ds", frames=4)
    index = json.loads((data / "index.json").read_text())
    assert codec_for_index(index).describe()["name"] == "identity"
    latent_model, pixel_model = FLAVORS["tiny"], dataclasses.replace(FLAVORS["tiny"], in_channels=3)
    assert codec_for_export({"data": {"path": str(data)}}, latent_model).describe()["name"] == "identity"
    unreadable = {"data": {"path": str(tmp_path / "gone")}}
    assert codec_for_export(unreadable, pixel_model).describe()["name"] == "identity"
    for info in (unreadable, {"data": {}}):
        with pytest.raises(ValueError) as exc:
            codec_for_export(info, latent_model)
        assert len(str(exc.value).splitlines()) == 1 and "cannot tell which codec" in str(exc.value)
    # the text encoder: none for a model without text or an index that names none; a missing directory is an error
    assert text_encoder_for(index, latent_model, "cpu") is None
    assert text_encoder_for({"text_encoder": {"path": str(tmp_path / "gone")}}, latent_model, "cpu") is None
    assert text_encoder_for(str(tmp_path / "gone"), dataclasses.replace(pixel_model, text_dim=0), "cpu") is None
    with pytest.raises(ValueError, match="no such directory"):
        text_encoder_for(str(tmp_path / "gone"), latent_model, "cpu")


def test_cli_on_a_latent_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = _export(tmp_path)
    data = _latent_dataset(tmp_path / "ds", frames=12)
    out = tmp_path / "eval"
    assert main([str(export), "--out", str(out), "--data", str(data), *FAST]) == 0
    report = _check_outputs(out, {"model", COPY_LAST})
    assert report["object_metrics"] is False and "presence_f1" not in report["methods"]["model"]["per_frame"]
    assert report["methods"]["model"]["per_frame"]["mse"][:2] == [0, 0]

    with pytest.raises(SystemExit) as exc:  # 12 frames < 2 + 4 * 4
        main([str(export), "--out", str(out), "--data", str(data), *FAST, "--multiples", "4"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "have >= 18 frames" in err


def test_cli_conditions_on_dataset_captions(tmp_path: Path) -> None:
    export = _export(tmp_path, text_dim=FLAVORS["tiny"].text_dim)
    data = _latent_dataset(tmp_path / "ds", frames=10, text_dim=FLAVORS["tiny"].text_dim)
    out = tmp_path / "eval"
    assert main([str(export), "--out", str(out), "--data", str(data), *FAST]) == 0
    assert _check_outputs(out, {"model", COPY_LAST})["source"]["conditioning"] == "dataset captions"


@pytest.mark.slow  # loading transformers
def test_cli_embeds_synthetic_captions_with_a_text_encoder(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    save_tiny_text_encoder(tmp_path / "t5", dim=FLAVORS["tiny"].text_dim)
    export = _export(tmp_path, text_dim=FLAVORS["tiny"].text_dim)
    out = tmp_path / "eval"
    assert main([str(export), "--out", str(out), "--text-encoder", str(tmp_path / "t5"), *FAST]) == 0
    report = _check_outputs(out, {"model", COPY_LAST})
    assert report["source"]["conditioning"].startswith("captions embedded with")
    t5 = str(tmp_path / "t5")
    assert text_encoder_for({"text_encoder": {"path": t5}}, FLAVORS["tiny"], "cpu").dim == FLAVORS["tiny"].text_dim
    with pytest.raises(ValueError, match="gives 16-wide embeddings; the model takes 8"):
        text_encoder_for(t5, dataclasses.replace(FLAVORS["tiny"], text_dim=8), "cpu")


@pytest.mark.parametrize("args,message", [
    (["MISSING"], "not an export directory"),
    (["EXPORT", "--clips", "0"], "num_clips must be >= 1"),
    (["EXPORT", "--prompt-frames", "4"], "must be < the training clip length"),
    (["EXPORT", "--size", "15"], "even number"),
    (["EXPORT", "--i3d", "no_such_i3d.pt"], "no such file"),
    (["EXPORT", "--steps", "many"], "invalid int value"),
    (["EXPORT", "--data", "x", "--synthetic-seed", "3"], "not allowed with"),
    (["EXPORT", "--out", "A_FILE"], "is a file; give a directory"),
    (["EXPORT", "--i3d", "A_FILE"], "not a TorchScript model"),
    (["EXPORT", "--context-noise", "nan"], "not a finite number"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              args: list[str], message: str) -> None:
    export = _export(tmp_path)
    (tmp_path / "A_FILE").write_text("not a model, not a directory\n")
    argv = [str(export) if a == "EXPORT" else str(tmp_path / a) if a in ("MISSING", "A_FILE") else a for a in args]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vidgpt-eval: error:") and message in err, err
