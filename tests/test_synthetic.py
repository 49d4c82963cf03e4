"""The built-in synthetic task: scenes, their speed, and anti-aliased rendering by area coverage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.encode import main as encode_main
from data_pipeline.synthetic import (
    PALETTE,
    MovingShape,
    Scene,
    SyntheticTask,
    make_synthetic_videos,
    synthetic_scene,
)
from experiments.task_speed import motion
from vidgpt.evaluation import EvalSpec, mp4_round_trip, synthetic_truth
from vidgpt.evaluation.cli import _parser as eval_parser
from vidgpt.evaluation.cli import _spec as eval_spec
from vidgpt.sampling import SamplingSpec

BLACK = (0, 0, 0)


def test_speed_scales_only_the_velocities() -> None:
    for i in range(5):
        base, fast = synthetic_scene(i, size=32, seed=7), synthetic_scene(i, size=32, seed=7, speed=2.5)
        assert base.caption() == fast.caption()
        for a, b in zip(base.shapes, fast.shapes):
            assert (a.kind, a.colour, a.radius, a.x, a.y) == (b.kind, b.colour, b.radius, b.x, b.y)
            assert b.vx == pytest.approx(2.5 * a.vx) and b.vy == pytest.approx(2.5 * a.vy)
    assert synthetic_scene(2, size=32, seed=7, speed=1.0) == synthetic_scene(2, size=32, seed=7)


def test_one_point_per_pixel_is_the_hard_edged_drawing() -> None:
    scene = synthetic_scene(4, size=32, seed=1)
    hard = scene.render(6, supersample=1)
    assert np.array_equal(hard, scene.render(6))
    colours = {tuple(c) for c in hard.reshape(-1, 3)}
    assert colours <= {scene.background, *(PALETTE[s.colour] for s in scene.shapes)}  # no blended pixel


def test_coverage_of_a_square_on_pixel_boundaries_and_of_a_circle() -> None:
    # a white square whose edges lie on pixel boundaries covers whole pixels: supersampling changes nothing
    square = Scene(16, BLACK, (MovingShape("square", "white", 3.0, 8.0, 8.0, 0.0, 0.0),))
    assert np.array_equal(square.render(1, supersample=1), square.render(1, supersample=8))
    # shifted by half a pixel, its edge pixels are half covered: half the white level
    half = Scene(16, BLACK, (MovingShape("square", "white", 3.0, 8.5, 8.0, 0.0, 0.0),))
    row = half.render(1, supersample=8)[0, 8, :, 0].astype(int)
    assert row[5] == round(240 / 2) and row[11] == round(240 / 2) and row[6] == 240 and row[4] == 0
    # a circle's coverage sums to its area
    circle = Scene(32, BLACK, (MovingShape("circle", "white", 6.3, 15.7, 16.2, 0.0, 0.0),))
    covered = circle.render(1, supersample=16)[0, :, :, 0].astype(float).sum() / 240
    assert covered == pytest.approx(math.pi * 6.3**2, rel=0.01)


def test_sub_pixel_motion_shows_in_every_anti_aliased_frame() -> None:
    slow = Scene(16, BLACK, (MovingShape("square", "white", 3.0, 6.1, 8.0, 0.25, 0.0),))  # a quarter pixel a frame
    hard, soft = slow.render(8, supersample=1), slow.render(8, supersample=4)
    changed = lambda v: int((np.abs(np.diff(v.astype(int), axis=0)).sum(axis=(1, 2, 3)) > 0).sum())  # noqa: E731
    assert changed(soft) == 7  # every step moves some edge pixel's blend
    assert changed(hard) == 2  # hard edges move only when they cross a pixel centre: once every 4 frames


def test_the_task_is_recorded_and_checked(tmp_path: Path) -> None:
    task = SyntheticTask(speed=2.5, supersample=4)
    make_synthetic_videos(tmp_path, 2, size=16, frames=6, fps=8, seed=3, task=task)
    record = json.loads((tmp_path / "synthetic.json").read_text())
    assert record == {"seed": 3, "size": 16, "frames": 6, "fps": 8, "speed": 2.5, "supersample": 4}
    with pytest.raises(ValueError, match="speed must be a number > 0"):
        SyntheticTask(speed=0)
    with pytest.raises(ValueError, match="supersample must be >= 1"):
        SyntheticTask(supersample=0)


def test_task_speed_experiment_measures_the_known_displacements() -> None:
    base = motion(1.0, scenes=16, size=32, prompt_frames=2, clip_len=8, seed=1000)
    fast = motion(2.0, scenes=16, size=32, prompt_frames=2, clip_len=8, seed=1000)
    # 1-4% of 32 px per frame, on average about 2.5% (0.8 px); twice the speed, twice the displacement, less a
    # little where a bounce inside a frame shortens the step
    assert 0.6 < base["mean_px_per_frame"] < 1.0
    assert 0.95 * 2 * base["mean_px_per_frame"] < fast["mean_px_per_frame"] <= 2 * base["mean_px_per_frame"]
    assert fast["copy_last_first_clip_centroid_error_px"] > 1.5 * base["copy_last_first_clip_centroid_error_px"]


def test_the_evaluators_truth_is_rendered_with_the_task() -> None:
    task = SyntheticTask(speed=2.5, supersample=4)
    spec = EvalSpec(clip_len=4, multiples=1, num_clips=2, size=16, task=task)
    truth, scenes = synthetic_truth(spec)
    assert scenes[1] == synthetic_scene(1, size=16, seed=1000, speed=2.5)
    direct = mp4_round_trip(scenes[1].render(spec.total_frames, 4), spec.fps)
    assert np.array_equal(truth[1], direct)
    assert spec.to_json()["task"] == {"speed": 2.5, "supersample": 4}
    assert "task" not in EvalSpec(clip_len=4).to_json()  # the default task: report.json as before


def test_the_encoder_records_the_task_and_the_evaluator_takes_it(tmp_path: Path) -> None:
    task = SyntheticTask(speed=2.5, supersample=4)
    make_synthetic_videos(tmp_path / "videos", 2, size=16, frames=6, fps=8, seed=3, task=task)
    assert encode_main([str(tmp_path / "videos"), str(tmp_path / "latents"), "--codec", "identity", "--size", "16",
                        "--min-frames", "4", "--decode-workers", "1"]) == 0
    index = json.loads((tmp_path / "latents" / "index.json").read_text())
    assert index["synthetic"] == {"seed": 3, "size": 16, "frames": 6, "fps": 8, "speed": 2.5, "supersample": 4}
    assert SyntheticTask.of_index(index) == task
    assert SyntheticTask.of_index({"codec": {"name": "identity"}}) is None  # encoded before the key, or real footage
    # vidgpt-eval renders the truth with the dataset's task unless a flag says otherwise
    info = {"data": {"num_frames": 4}}
    args = eval_parser().parse_args(["export"])
    assert eval_spec(args, SamplingSpec(), info, index).task == task
    assert eval_spec(args, SamplingSpec(), info, None).task == SyntheticTask()
    args = eval_parser().parse_args(["export", "--speed", "1.5"])
    assert eval_spec(args, SamplingSpec(), info, index).task == SyntheticTask(speed=1.5, supersample=4)


def test_the_videos_do_not_depend_on_the_number_of_workers(tmp_path: Path) -> None:
    task = SyntheticTask(speed=2.5, supersample=2)
    one = make_synthetic_videos(tmp_path / "one", 6, size=16, frames=5, seed=2, task=task, workers=1)
    two = make_synthetic_videos(tmp_path / "two", 6, size=16, frames=5, seed=2, task=task, workers=2)
    assert [p.name for p in one] == [p.name for p in two]
    for a, b in zip(one, two, strict=True):
        assert a.read_bytes() == b.read_bytes() and a.with_suffix(".txt").read_text() == b.with_suffix(".txt").read_text()
    assert (tmp_path / "one" / "manifest.jsonl").read_text() == (tmp_path / "two" / "manifest.jsonl").read_text()


def test_the_anti_aliased_centroid_moves_by_the_velocity_and_bounces() -> None:
    shape = MovingShape("square", "white", 3.0, 10.3, 16.0, 2.35, 0.0)  # reaches the right wall at frame 7
    frames = Scene(32, BLACK, (shape,)).render(12, supersample=8)[..., 0].astype(float)  # (T, H, W)
    xs = np.arange(32) + 0.5
    measured = (frames.sum(axis=1) * xs).sum(axis=1) / frames.sum(axis=(1, 2))  # intensity-weighted x, (T,)
    true_x, _ = shape.centres(12, 32)
    # area coverage on 8 x 8 points per pixel: the centroid is where the shape is, to the points' 1/16 px
    assert np.abs(measured - true_x).max() <= 1 / 16 + 1e-9
    assert np.allclose(np.diff(measured[:6]), 2.35, atol=1 / 8 + 1e-9)  # before the wall: the velocity
    free = shape.x + shape.vx * np.arange(12)  # past the wall at 29 it comes back by as much as it overshot
    assert np.allclose(true_x[free > 29], 2 * 29 - free[free > 29]) and np.diff(measured[-3:]).max() < 0


def test_the_held_out_scenes_never_appear_in_the_training_data() -> None:
    training = {synthetic_scene(i, size=32, seed=0, speed=2.5) for i in range(4096)}  # the quality run's videos
    held_out = [synthetic_scene(i, size=32, seed=1000, speed=2.5) for i in range(64)]  # vidgpt-eval's default
    assert len(training) == 4096 and not training.intersection(held_out)
    first_shapes = {(s.shapes[0].x, s.shapes[0].y) for s in training}
    assert not any((s.shapes[0].x, s.shapes[0].y) in first_shapes for s in held_out)
