from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import longvideo


def test_longvideo_benchmark_prints_one_json_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A minute-sized run of the whole benchmark: both models trained alike, four generations measured."""
    args = ["--flavor", "tiny", "--minutes", "1.5", "--steps", "3", "--clip-len", "4", "--multiples", "2",
            "--clips", "2", "--sample-steps", "2", "--size", "16", "--pool", "6", "--batch", "2",
            "--sink", "1", "--per-frame-noise", "--speed", "2.5", "--supersample", "2", "--out", str(tmp_path / "bench")]
    assert longvideo.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    assert result["train"]["causal"]["steps"] == result["train"]["bidirectional"]["steps"] == 3
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
