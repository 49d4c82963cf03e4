"""experiments.compute_curve: longvideo outputs -> one plot and one JSON object, points sorted by steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import compute_curve


def longvideo_result(steps: int, f1: float) -> dict:
    """The parts of an experiments.longvideo output the curve reads."""
    figures = {arm: {h: {"upto": {"presence_f1": f1 + bonus, "mse": 0.05, "centroid_error": 7.0, "psnr": 14.0}}
                     for h in ("1x", "4x", "8x")}
               for arm, bonus in (("causal_cache", 0.0), ("bidirectional", 0.05), ("copy_last", 0.2))}
    arm = {"steps": steps, "seconds": steps / 2}
    return {"benchmark": "longvideo", "train": {"causal": arm, "bidirectional": arm, "same_lr_each_step": True},
            "figures": figures}


def test_points_are_sorted_by_steps_and_plotted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = []
    for steps, f1 in ((2200, 0.7), (550, 0.5), (1100, 0.6)):
        paths.append(tmp_path / f"s{steps}.json")
        paths[-1].write_text(json.dumps(longvideo_result(steps, f1)))
    assert compute_curve.main([*map(str, paths), "--out", str(tmp_path / "curve.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [p["steps"] for p in out["points"]] == [550, 1100, 2200]
    assert [p["presence_f1_4x"]["bidirectional"] for p in out["points"]] == pytest.approx([0.55, 0.65, 0.75])
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_another_json_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "report.json"
    other.write_text(json.dumps({"benchmark": "recipe"}))
    with pytest.raises(SystemExit):
        compute_curve.main([str(other)])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "report.json: not the output of experiments.longvideo (benchmark 'recipe')")
