"""The demo: its planned preemption (torchrun's report of ranks that exited 75 is left out) and its goal lines."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.synthetic import SyntheticTask
from vidgpt.demo import goal_lines, run_preempted, without_launcher_report
from vidgpt.distributed import free_port
from vidgpt.evaluation import QUALITY_GOALS, EvalSpec, evaluate_videos, synthetic_truth
from vidgpt.sampling import SamplingSpec

RANK_LINES = ["a warning from rank 1\n"]
REPORT = """\
W1205 22:09:00.107000 20273 site-packages/torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 20366 closing signal SIGTERM
E1205 22:09:00.109000 20273 site-packages/torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 75) local_rank: 0 (pid: 20365) of binary: /usr/bin/python
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/usr/lib/python3/site-packages/torch/distributed/launcher/api.py", line 383, in launch_agent
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
vidgpt.train FAILED
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  rank      : 0 (local_rank: 0)
  exitcode  : 75 (pid: 20365)
============================================================
""".splitlines(keepends=True)  # noqa: E501 - torchrun's own lines, as it prints them


def test_the_launcher_report_is_dropped_and_the_ranks_lines_kept() -> None:
    assert without_launcher_report(RANK_LINES + REPORT) == RANK_LINES
    assert without_launcher_report(REPORT[:1] + RANK_LINES + REPORT[1:]) == RANK_LINES


def test_a_rank_traceback_is_kept() -> None:
    rank_error = ["Traceback (most recent call last):\n", '  File "train.py", line 1\n', "ValueError: bad\n"]
    assert without_launcher_report(rank_error) == rank_error


FAKE_TRAINER = """
import json, os, signal, sys, time
from pathlib import Path

run, code = Path(sys.argv[1]), int(sys.argv[2])
stop = []
signal.signal(signal.SIGUSR1, lambda *_: stop.append(True))
rank = int(os.environ["RANK"])
step = 0
while not stop:
    step += 1
    if rank == 0:
        with open(run / "losses.jsonl", "a") as f:
            f.write('{"loss": 1.0}\\n')
    time.sleep(0.05)
print(f"rank {rank} stopping", file=sys.stderr, flush=True)
if rank == 0:
    (run / "status.json").write_text(json.dumps({"state": "preempted", "step": step}))
else:  # as the trainer's ranks meet before exiting: a rank that fails first would get rank 0 killed unsaved
    deadline = time.monotonic() + 30
    while not (run / "status.json").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
sys.exit(code)
"""


@pytest.mark.slow  # two torchrun launches
def test_a_planned_preemption_leaves_no_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAINER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for code, planned in ((75, True), (3, False)):
        run = tmp_path / f"run{code}"
        run.mkdir()
        train = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                 str(free_port()), str(script), str(run), str(code)]
        status = run_preempted(train, env, run, 3)
        assert status["state"] == "preempted" and status["step"] >= 3
        err = capsys.readouterr().err
        assert "rank 0 stopping" in err  # the ranks' own lines are kept
        assert ("ChildFailedError" in err) is not planned and ("exitcode: 3" in err) is not planned, err


def test_the_goal_lines_name_the_tier_and_what_is_met() -> None:
    spec = EvalSpec(sampling=SamplingSpec(prompt_frames=2), clip_len=4, multiples=2, num_clips=2, size=16,
                    task=SyntheticTask(speed=2.5, supersample=4))
    truth, scenes = synthetic_truth(spec)
    report = json.loads(json.dumps(evaluate_videos(truth, {"model": truth.copy()}, spec, scenes).to_json()))
    demo = goal_lines(report)
    assert "continued from 2 frames for 2 x 4 frames" in demo
    assert demo.count(": met") == 5 and "NOT met" not in demo and "quality >" not in demo  # the oracle, demo goals
    quality = goal_lines(report, (QUALITY_GOALS,))
    assert "quality > copy-last + 2 dB: met" in quality
    assert "colour-presence F1, 8x: n/a" in quality and "not measured" in quality  # 2 clip lengths only
    lazy = json.loads(json.dumps(evaluate_videos(truth, {"model": np.repeat(truth[:, 1:2], truth.shape[1], axis=1)},
                                                 spec, scenes).to_json()))
    assert "(demo <= 0.7x: NOT met)" in goal_lines(lazy)  # copying the prompt misses the motion
