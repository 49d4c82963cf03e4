"""The motion bound's posterior sampler on cases with known answers."""

from __future__ import annotations

import numpy as np

from data_pipeline.synthetic import MovingShape, Scene, SyntheticTask
from experiments.motion_bound import centres, position_box, posterior, shape_masks

SIZE = 32
SHAPE = MovingShape(kind="circle", colour="red", radius=5.0, x=15.3, y=14.1, vx=0.9, vy=-0.4)


def test_one_frame_says_nothing_about_the_velocity() -> None:
    draws = posterior(SHAPE, 1, SIZE, np.random.default_rng(0), want=4000, proposals=4000)
    speed = np.hypot(draws[:, 2], draws[:, 3])
    assert len(draws) >= 4000 and abs(speed.mean() - 0.025 * SIZE) < 0.03  # the prior's mean speed
    assert abs(draws[:, 2].mean()) < 0.05 and abs(draws[:, 3].mean()) < 0.05  # any direction
    assert np.abs(draws[:, 0] - SHAPE.x).max() < 1.0 and np.abs(draws[:, 1] - SHAPE.y).max() < 1.0


def test_a_second_frame_pins_the_velocity_and_every_draw_reproduces_the_masks() -> None:
    rng = np.random.default_rng(1)
    true_v = np.array([SHAPE.vx, SHAPE.vy])
    one = posterior(SHAPE, 1, SIZE, rng, want=500, proposals=4000)
    two = posterior(SHAPE, 2, SIZE, rng, want=8, proposals=4000, rounds=100)
    assert len(two) >= 8
    err1 = np.linalg.norm(one[:, 2:] - true_v, axis=1).mean()
    err2 = np.linalg.norm(two[:, 2:] - true_v, axis=1).mean()
    assert err2 < 0.3 < 0.5 < err1  # the hard edges of two frames nearly fix a 1 px/frame motion
    t = np.arange(2, dtype=float)
    tx, ty = centres(np.array([SHAPE.x]), np.array([SHAPE.y]), np.array([SHAPE.vx]), np.array([SHAPE.vy]),
                     SHAPE.radius, t, SIZE)
    observed = shape_masks(SHAPE, tx[0], ty[0], SIZE)  # (2, S, S)
    cx, cy = centres(*two.T, SHAPE.radius, t, SIZE)
    assert (shape_masks(SHAPE, cx, cy, SIZE) == observed[None]).all()


def test_anti_aliased_frames_pin_the_position_tighter_and_match_the_renderer() -> None:
    task = SyntheticTask(speed=2.5, supersample=4)
    shape = MovingShape(kind="square", colour="white", radius=4.3, x=15.3, y=14.1, vx=2.1, vy=-1.0)
    # the bound's coverage counts are what the renderer draws: a white square on black, 240 * count / 16
    frame = Scene(SIZE, (0, 0, 0), (shape,)).render(1, supersample=4)[0, :, :, 0].astype(int)
    counts = shape_masks(shape, np.array(shape.x), np.array(shape.y), SIZE, supersample=4).astype(int)
    assert np.array_equal(np.rint(counts * 240 / 16).astype(int), frame)
    hard = posterior(shape, 1, SIZE, np.random.default_rng(0), want=300, proposals=4000)
    soft = posterior(shape, 1, SIZE, np.random.default_rng(0), task=task, want=300, proposals=4000)
    assert len(soft) >= 300 and soft[:, :2].std(axis=0).max() < hard[:, :2].std(axis=0).min() / 2
    box = position_box(4)  # the proposals' box holds the whole posterior: no draw comes near its edge
    assert np.abs(soft[:, 0] - shape.x).max() < 0.7 * box and np.abs(soft[:, 1] - shape.y).max() < 0.7 * box
    speed = np.hypot(soft[:, 2], soft[:, 3])  # one frame: the velocity is the task's prior, 2.5x faster
    assert abs(speed.mean() - 2.5 * 0.025 * SIZE) < 0.1
    two = posterior(shape, 2, SIZE, np.random.default_rng(1), task=task, want=200, proposals=4000)
    assert len(two) >= 200
    assert np.abs(two[:, 2] - shape.vx).max() < 0.7 * box and np.abs(two[:, 3] - shape.vy).max() < 0.7 * box
    assert np.linalg.norm(two[:, 2:] - [shape.vx, shape.vy], axis=1).mean() < 0.2  # two frames pin the motion
