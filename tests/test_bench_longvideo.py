from __future__ import annotations

import dataclasses
import itertools
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from experiments import longvideo
from vidgpt.model import FLAVORS

TINY = ["--flavor", "tiny", "--clip-len", "4", "--multiples", "2", "--clips", "2", "--sample-steps", "2", "--size", "16",
        "--pool", "6", "--batch", "2"]


@pytest.fixture
def keep_threads() -> Iterator[None]:
    """main sets torch's thread count for the whole process: put it back for the tests after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_longvideo_benchmark_prints_one_json_object(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    keep_threads: None) -> None:
    """A minute-sized run of the whole benchmark: both models trained alike, four generations measured."""
    args = [*TINY, "--train-minutes", "0.5", "--steps", "3", "--sink", "1", "--per-frame-noise", "--speed", "2.5",
            "--supersample", "2", "--context-guidance", "2", "--prompt-min-len", "0", "--threads", "1",
            "--out", str(tmp_path / "bench")]
    assert longvideo.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    assert result["train"]["causal"]["steps"] == result["train"]["bidirectional"]["steps"] == 3
    assert result["train"]["same_lr_each_step"] is True and result["train"]["seconds_per_model"] == 30.0
    for arm in ("causal", "bidirectional"):
        assert set(result["train"][arm]["lr"]) == {"first", "last", "mean"} and result["train"][arm]["seconds"] >= 0
    assert result["train"]["causal"]["lr"] == result["train"]["bidirectional"]["lr"]
    settings = result["settings"]
    assert (settings["train_minutes"], settings["minutes"], settings["context_guidance"], settings["threads"],
            settings["prompt_min_len"], settings["lr"], settings["batch"]) == (0.5, None, 2.0, 1, 0, 2e-3, 2)
    assert result["eval"]["context_scale"] == 2.0 and result["host"]["threads"] == 1
    assert result["timing"]["chunk_seconds_uncached"] > 0 and result["timing"]["chunk_seconds_cached"] > 0
    assert result["model"]["params"] == result["model"]["params_bidirectional"]
    assert set(result["figures"]) == {"causal_cache", "causal_no_cache", "causal_cache_seed2", "bidirectional",
                                      "causal_cache_sink", "causal_cache_sink_seed2", "copy_last"}
    assert result["train"]["task"] == {"speed": 2.5, "supersample": 2} and result["eval"]["sink"] == 1
    assert result["diffusion"]["per_frame_noise"] is True
    for method in result["figures"].values():
        assert set(method) == {"1x", "2x"}
        assert {"presence_f1", "garbage", "centroid_error", "mse", "psnr"} <= set(method["2x"]["upto"])
    assert set(result["goals"]["cache_agrees_with_no_cache_within_2x_seed_noise"]) >= {"mse", "garbage"}
    for name in ("report", "plot", "sheet"):
        assert Path(result["files"][name]).is_file(), result["files"]


def test_longvideo_benchmark_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        longvideo.main(["--prompt-frames", "8", "--clip-len", "8"])
    assert exc.value.code == 2
    assert "--prompt-frames 8 must be < --clip-len 8" in capsys.readouterr().err


def test_longvideo_refuses_a_budget_left_without_training_time(capsys: pytest.CaptureFixture[str],
                                                                keep_threads: None) -> None:
    """3 s cannot hold 30 s of training per model: one line that says what the pool and the evaluation took."""
    assert longvideo.main([*TINY, "--minutes", "0.05"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("--minutes 0.05: the pool took ") and "evaluation about" in err and "give more" in err


def _tiny_training() -> tuple[longvideo.TrainSpec, torch.Tensor, dict[str, object]]:
    args = longvideo.parse_args(["--flavor", "tiny", "--clip-len", "4", "--size", "16", "--batch", "2"])
    diffusion_cfg, objective = longvideo.recipe_config(args)
    spec = longvideo.TrainSpec(clip_len=4, batch=2, pool=4, pool_frames=8, size=16, warmup=1)
    pool = torch.rand(4, 8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return spec, pool, {"diffusion_cfg": diffusion_cfg, "objective": objective}


def test_time_bounded_schedule_decays_and_the_baseline_replays_it_step_for_step() -> None:
    """Bounded by time (a fake clock: one second per step) under a step cap it never reaches, the causal arm's
    cosine still runs to its end; the baseline, given that record, trains as many steps at the same lrs."""
    spec, pool, recipe = _tiny_training()
    causal_cfg = dataclasses.replace(FLAVORS["tiny"], in_channels=3, text_dim=0)
    bidir_cfg = dataclasses.replace(causal_cfg, temporal="bidirectional")
    ticks = itertools.count()
    _, causal = longvideo.train(causal_cfg, pool=pool, spec=spec, steps=1000, seconds=10.0,
                                clock=lambda: float(next(ticks)), **recipe)  # type: ignore[arg-type]
    factors = causal["lr_factors"]
    assert 0 < causal["steps"] < 1000 and len(factors) == causal["steps"]
    assert max(factors) > 0.9 and factors[-1] < 0.5 * max(factors)  # the old step-cap progress stayed near 1
    _, bidir = longvideo.train(bidir_cfg, pool=pool, spec=spec, lr_factors=factors, **recipe)  # type: ignore[arg-type]
    assert bidir["steps"] == causal["steps"] and bidir["lr_factors"] == factors
    # the step cap binding (time to spare): the plain step schedule, to its end
    _, capped = longvideo.train(causal_cfg, pool=pool, spec=spec, steps=5, seconds=1e6,
                                clock=lambda: float(next(ticks)), **recipe)  # type: ignore[arg-type]
    assert capped["lr_factors"] == pytest.approx([longvideo.lr_factor(i, i / 5, 1) for i in range(5)], abs=1e-4)
    assert capped["lr_factors"][-1] < 0.5 * capped["lr_factors"][0]
    with pytest.raises(ValueError, match="lr_factors fixes the steps"):
        longvideo.train(bidir_cfg, pool=pool, spec=spec, steps=3, lr_factors=factors, **recipe)  # type: ignore[arg-type]


def test_evaluation_estimate_counts_the_cached_and_uncached_generations_it_runs() -> None:
    """2 s per uncached chunk, 0.5 s per cached one, 64 chunks: causal_no_cache and bidirectional uncached,
    causal_cache and causal_cache_seed2 cached (the old estimate: 4 uncached, 512 s); a sink adds 2 cached."""
    for sink, uncached, cached, seconds in ((0, 2, 2, 320.0), (1, 2, 4, 384.0)):
        runs = longvideo.evaluation_runs(sink)
        assert sum(not c for _, c, _, _ in runs.values()) == uncached and sum(c for _, c, _, _ in runs.values()) == cached
        assert longvideo.evaluation_seconds(2.0, 0.5, uncached_runs=uncached, cached_runs=cached, chunks=64) == seconds
    lean = longvideo.evaluation_runs(0, no_cache=False)  # --skip-no-cache: the baseline is the one uncached run
    assert set(lean) == {"causal_cache", "causal_cache_seed2", "bidirectional"}


def test_training_time_is_train_minutes_or_what_the_budget_leaves() -> None:
    fixed = longvideo.parse_args(["--train-minutes", "5"])
    assert fixed.minutes is None and longvideo.training_seconds(fixed, 1e9, 600.0) == 300.0
    budget = longvideo.parse_args(["--minutes", "20"])
    assert longvideo.training_seconds(budget, 1100.0, 300.0) == 400.0


def test_flags_match_the_demo_and_guidance_reaches_both_arms(capsys: pytest.CaptureFixture[str]) -> None:
    demo = tomllib.loads((Path(__file__).parents[1] / "configs" / "demo_cpu.toml").read_text())
    args = longvideo.parse_args([])
    assert args.lr == demo["optimizer"]["lr"] and args.batch == 2 * demo["data"]["batch_size"]  # 2 ranks
    assert args.minutes == 20.0 and args.threads >= 1 and args.context_guidance == 1.0
    args = longvideo.parse_args(["--context-guidance", "2", "--prompt-min-len", "0", "--threads", "3"])
    assert args.threads == 3
    specs = longvideo.run_specs(longvideo.evaluation_spec(args), longvideo.evaluation_runs(1))
    assert {name: s.sampling.context_scale for name, s in specs.items()} == dict.fromkeys(specs, 2.0)
    assert specs["bidirectional"].sampling.kv_cache is False and specs["causal_cache_sink"].sampling.sink == 1
    for argv, message in ((["--context-guidance", "2"], "add --prompt-min-len 0"),
                          (["--threads", "0"], "--threads must be > 0"),
                          (["--minutes", "5", "--train-minutes", "5"], "not allowed with argument")):
        with pytest.raises(SystemExit) as exc:
            longvideo.parse_args(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
