from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from experiments import recipe
from vidgpt.model import ModelConfig, VidGPT


def test_recipe_changes_the_named_fields_with_their_types() -> None:
    r = recipe.recipe(recipe.BASE, ["loss_weighting=snr_clamp", "snr_max=20"])
    assert (r.objective.loss_weighting, r.objective.snr_max, r.diffusion.prediction) == ("snr_clamp", 20.0, "x0")
    assert recipe.recipe(recipe.BASE, []) == recipe.BASE
    assert recipe.recipe(recipe.BASE, ["per_frame_noise=true"]).objective.per_frame_noise is True
    assert recipe.recipe(recipe.BASE, ["per_frame_noise=False"]).objective.per_frame_noise is False
    assert recipe.recipe(recipe.BASE, ["prompt_noise=0.05,0.3"]).objective.prompt_noise == [0.05, 0.3]
    assert recipe.recipe(recipe.BASE, ["teacher_forcing=true"]).objective.teacher_forcing is True
    small = recipe.recipe(recipe.BASE, ["hidden=96", "steps=910"])  # a smaller model for longer: model and steps
    assert (small.diffusion, small.objective) == (recipe.BASE.diffusion, recipe.BASE.objective) and small.steps == 910
    assert small.model_config(recipe.FLAVORS["cpu"]).hidden == 96 and small.model_config(recipe.FLAVORS["cpu"]).depth == 4
    assert recipe.recipe(small, ["mlp_ratio=2"]).model == (("hidden", 96), ("mlp_ratio", 2.0))  # B builds on A
    assert recipe.recipe(recipe.BASE, ["lr=4e-3"]).lr == 4e-3 and recipe.recipe(small, ["lr=1e-3"]).steps == 910
    assert recipe.recipe(recipe.BASE, ["temporal_scope=frame"]).model_config(recipe.FLAVORS["cpu"]).temporal_scope == "frame"
    assert recipe.recipe(recipe.BASE, ["refine=32"]).model_config(recipe.FLAVORS["cpu"]).refine == 32
    for bad, match in [(["snr_max"], "expected FIELD=VALUE"), (["epochs=3"], "expected FIELD=VALUE"),
                       (["snr_max=lots"], "'lots' is not a float"), (["per_frame_noise=1"], "not true or false"),
                       (["steps=0"], "not a whole number >= 1"), (["hidden=1.5"], "'1.5' is not a int"),
                       (["prompt_noise=0,x"], "not a comma-separated list"), (["prompt_noise=0.3,0.1"], "lo <= hi"),
                       (["temporal_scope=sideways"], "temporal_scope must be"), (["lr=0"], "not a number > 0"),
                       (["lr=fast"], "not a number > 0"), (["lr=nan"], "not a number > 0")]:
        with pytest.raises(ValueError, match=match):
            recipe.recipe(recipe.BASE, bad)


def test_paired_differences_and_summaries_on_known_rows() -> None:
    a = [{"presence_f1": 0.7, "garbage": 0.02, "centroid_ratio_first_clip": 1.0, "largest_part": 0.9, "mse": 0.05},
         {"presence_f1": 0.8, "garbage": 0.01, "centroid_ratio_first_clip": None, "largest_part": 0.9, "mse": 0.05}]
    b = [{"presence_f1": 0.8, "garbage": 0.03, "centroid_ratio_first_clip": 0.9, "largest_part": 0.9, "mse": 0.04},
         {"presence_f1": 0.7, "garbage": 0.00, "centroid_ratio_first_clip": 0.8, "largest_part": 0.95, "mse": 0.06}]
    d = recipe.paired(a, b)
    assert d["presence_f1"]["diffs"] == [0.1, -0.1] and d["presence_f1"]["mean"] == 0.0
    assert d["presence_f1"]["std"] == pytest.approx(0.1414, abs=1e-4) and d["presence_f1"]["b_better_on"] == "1/2"
    assert d["garbage"]["b_better_on"] == "1/2"  # lower is better
    assert d["centroid_ratio_first_clip"]["diffs"] == [-0.1] and d["centroid_ratio_first_clip"]["std"] is None
    assert d["largest_part"]["b_better_on"] == "1/2"  # equal is not better
    s = recipe.summarize(a)
    assert s["presence_f1"] == {"mean": 0.75, "std": pytest.approx(0.0707, abs=1e-4)}
    assert s["centroid_ratio_first_clip"] == {"mean": 1.0, "std": None}


def test_recipe_benchmark_prints_one_json_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--flavor", "tiny", "--steps", "2", "--seeds", "2", "--pool", "4", "--clips", "2", "--size", "16",
            "--clip-len", "4", "--multiples", "1", "--sample-steps", "2", "--batch", "2",
            "--a", "loss_weighting=none", "--b", "loss_weighting=snr_clamp", "hidden=16", "steps=3", "--context-scale", "2",
            "--chunk", "1", "--window", "3", "--out", str(tmp_path / "r")]
    assert recipe.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    assert result["recipes"]["a"]["loss_weighting"] == "none" and result["recipes"]["b"]["loss_weighting"] == "snr_clamp"
    assert len(result["per_seed"]["a"]) == len(result["per_seed"]["b"]) == 2
    assert all(len(v["diffs"]) <= 2 for v in result["b_minus_a"].values())
    assert len(result["b_minus_a"]["mse"]["diffs"]) == 2
    assert [s["steps"] for s in result["train"]["a"]] == [2, 2] and [s["steps"] for s in result["train"]["b"]] == [3, 3]
    assert result["train"]["steps"] == {"a": 2, "b": 3} and result["eval"]["context_scale"] == 2.0
    assert (result["eval"]["chunk"], result["eval"]["window"]) == (1, 3)
    assert result["model"]["b"]["hidden"] == 16 and result["model"]["b"]["params"] < result["model"]["a"]["params"]
    assert (tmp_path / "r" / "b_seed1" / "sheet.png").is_file()
    saved = torch.load(tmp_path / "r" / "b_seed1" / recipe.WEIGHTS)
    model = VidGPT(ModelConfig(**saved["model"]))
    model.load_state_dict(saved["state_dict"])  # the weights fit the config they were saved with
    assert model.cfg.hidden == 16 and saved["diffusion"]["prediction"] == "x0"

    # one arm at one seed, in its own process, is that arm of the paired run (seeds spread over processes)
    alone = [*args[:args.index("--seeds")], "--seeds", "1", "--first-seed", "1", "--arms", "b",
             *args[args.index("--seeds") + 2:]]
    assert recipe.main(alone) == 0
    single = json.loads(capsys.readouterr().out.strip())
    assert list(single["per_seed"]) == ["b"] and single["train"]["seeds"] == [1] and single["b_minus_a"] is None
    assert single["per_seed"]["b"][0] == result["per_seed"]["b"][1]
    again = torch.load(tmp_path / "r" / "b_seed1" / recipe.WEIGHTS)["state_dict"]  # rewritten by the lone run
    assert all(torch.equal(again[k], saved["state_dict"][k]) for k in saved["state_dict"])


def test_recipe_arm_learning_rate_reaches_training(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--flavor", "tiny", "--steps", "3", "--seeds", "1", "--pool", "4", "--clips", "2", "--size", "16",
            "--clip-len", "4", "--multiples", "1", "--sample-steps", "2", "--batch", "2", "--chunk", "1", "--lr", "1e-3"]
    runs = []
    for lr in ("1e-3", "1e-2"):  # B differs from A by its lr alone (lr=1e-3: the benchmark's --lr, set on the arm)
        assert recipe.main([*args, "--arms", "b", "--b", f"lr={lr}"]) == 0
        runs.append(json.loads(capsys.readouterr().out.strip()))
    assert [r["train"]["lr"] for r in runs] == [{"a": 1e-3, "b": 1e-3}, {"a": 1e-3, "b": 1e-2}]
    assert runs[0]["train"]["b"][0]["loss_last_100"] != runs[1]["train"]["b"][0]["loss_last_100"]


@pytest.mark.parametrize("argv,message", [
    (["--b"], "--b changes nothing"),
    (["--b", "loss_weighting=snr_clamp", "prediction=velocity"], "with prediction 'x0'"),
    (["--b", "colour=red"], "expected FIELD=VALUE"),
    (["--b", "hidden=30"], "not divisible by heads"),
    (["--seeds", "0", "--b", "snr_max=3"], "--seeds must be > 0"),
    (["--chunk", "0", "--b", "snr_max=3"], "--chunk must be > 0"),
    (["--arms", "a", "--b", "snr_max=3"], "--b snr_max=3 would be ignored"),
    (["--b", "refine=-2"], "refine must be >= 0"),
])
def test_recipe_benchmark_refuses_bad_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        recipe.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_recipe_arm_a_alone_needs_no_b() -> None:
    args = recipe.parse_args(["--arms", "a", "--first-seed", "2"])
    assert args.recipe_a == args.recipe_b and (args.arms, args.first_seed) == ("a", 2)
    with pytest.raises(SystemExit):
        recipe.parse_args(["--arms", "b"])  # B alone must differ from A
    with pytest.raises(SystemExit):
        recipe.parse_args(["--first-seed", "-1", "--b", "snr_max=3"])
