"""The launchers on a real SLURM cluster (tools/slurm_test_cluster.sh up; .ci/run brings it up).

Skipped, with the reason, where no cluster answers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from data_pipeline.encode import main as encode
from data_pipeline.synthetic import make_synthetic_videos

from test_encode import samples_of

ROOT = Path(__file__).resolve().parents[1]
CPU_JOB = ["--gpus-per-node=0", "--ntasks-per-node=1", "--cpus-per-task=1"]  # the launcher defaults to 8 GPUs
TRAIN = ["--model.flavor=tiny", "--training.steps=8", "--checkpoint.interval=100", "--logging.interval=2",
         "--data.batch_size=2", "--optimizer.schedule=constant", "--optimizer.warmup_steps=0"]


def _cluster_up() -> str | None:
    if shutil.which("sbatch") is None:
        return "SLURM client tools are not installed (sudo bash tools/slurm_test_cluster.sh up)"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if "UP" not in ping.stdout:
        return "no SLURM controller answers (sudo bash tools/slurm_test_cluster.sh up)"
    return None


pytestmark = [pytest.mark.slurm, pytest.mark.skipif(_cluster_up() is not None, reason=str(_cluster_up()))]


def job_state(job: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job, "-o"], capture_output=True, text=True).stdout
    return next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "GONE")


def wait_state(job: str, states: set[str], timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job_state(job)
        if state in states:
            return state
        time.sleep(0.5)
    raise AssertionError(f"job {job} still {job_state(job)} after {timeout} s")


def sbatch(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> str:
    done = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run_dir / "losses.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slurm_videos")
    make_synthetic_videos(root, 24, size=32, frames=24, seed=5)
    return root


@pytest.fixture(scope="module")
def latents(videos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("slurm_latents") / "single"
    args = [str(videos), str(out), "--size", "32", "--min-frames", "8", "--max-frames", "24", "--no-progress",
            "--decode-workers", "0"]
    assert encode(args) == 0
    return out


@pytest.fixture(scope="module")
def uninterrupted(latents: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sbatch --wait launchers/train_multinode.sh: 2 nodes x 1 task, the tiny CPU config."""
    run = tmp_path_factory.mktemp("slurm_runs") / "plain"
    env = {"CONFIG": "configs/demo_cpu.toml", "RUN_DIR": str(run)}
    log = run.parent / "plain-%j.out"
    done = subprocess.run(
        ["sbatch", "--wait", f"--output={log}", *CPU_JOB, "launchers/train_multinode.sh", f"--data.path={latents}", *TRAIN],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env},
    )
    assert done.returncode == 0, (done.stderr, [p.read_text() for p in run.parent.glob("plain-*.out")])
    return run


def test_sbatch_trains_across_two_nodes(uninterrupted: Path) -> None:
    assert json.loads((uninterrupted / "status.json").read_text()) == {"state": "finished", "step": 8}
    assert (uninterrupted / "checkpoints" / "latest").read_text().strip() == "step_0000008"
    assert len(list((uninterrupted / "checkpoints" / "step_0000008").glob("zero_pp_rank_*_model_states.pt"))) == 2
    assert list((uninterrupted / "tensorboard").glob("events.out.tfevents.*"))
    assert [s for s, _ in losses(uninterrupted)] == list(range(1, 9))
    log = next(uninterrupted.parent.glob("plain-*.out")).read_text()
    assert "on n[1-2]" in log


def test_preempted_job_requeues_and_resumes_exactly(uninterrupted: Path, latents: Path, tmp_path: Path) -> None:
    run = tmp_path / "preempted"
    env = {"CONFIG": "configs/demo_cpu.toml", "RUN_DIR": str(run)}
    job = sbatch(f"--output={tmp_path}/job-%j.out", *CPU_JOB, "launchers/train_multinode.sh", f"--data.path={latents}",
                 *TRAIN, env=env)
    deadline = time.monotonic() + 240
    while not ((run / "losses.jsonl").exists() and len(losses(run)) >= 2):
        assert job_state(job) in ("PENDING", "RUNNING", "CONFIGURING"), job_state(job)
        assert time.monotonic() < deadline
        time.sleep(0.1)
    subprocess.run(["scancel", "--signal=USR1", "--full", job], check=True)
    assert wait_state(job, {"PENDING", "COMPLETED", "FAILED"}) == "PENDING"  # requeued, held by its BeginTime
    assert not (run / "run.lock").exists()  # the first run released it
    now = time.time()  # the lock a first run on a lost node leaves: another host, freshly refreshed
    (run / "run.lock").write_text(json.dumps({"host": "lost-node", "pid": 1, "token": "old", "started": now,
                                              "refreshed": now, "slurm_job": job, "slurm_restart": 0}))
    time.sleep(5)  # let the nodes finish revoking the first run's credential, else the restart is refused
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False)  # skip the ~2 min delay
    assert wait_state(job, {"COMPLETED", "FAILED", "CANCELLED"}) == "COMPLETED"
    log = next(tmp_path.glob("job-*.out")).read_text()
    assert "requeueing job" in log and "restart 1" in log and "resumed from" in log
    assert f"taking the lock over (it was taken by run 0 of SLURM job {job}, which was requeued since)" in log
    assert losses(run) == losses(uninterrupted)  # every step once, the same losses


def _encode_array(videos: Path, out: Path, cwd: Path, **env: str) -> tuple[str, str]:
    done = subprocess.run(
        ["bash", str(ROOT / "launchers" / "encode_array.sh"), str(videos), str(out), "--size", "32", "--min-frames",
         "8", "--max-frames", "24", "--decode-workers", "0"],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, "SBATCH_ARGS": "--cpus-per-task=1", **env},
    )
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    return words[words.index("job") + 1], words[-1]  # array job id, merge job id


def test_encode_array_with_merge_equals_one_process(videos: Path, latents: Path, tmp_path: Path) -> None:
    out = tmp_path / "array"
    array, merge = _encode_array(videos, out, tmp_path, TASKS="2")
    assert wait_state(merge, {"COMPLETED", "FAILED", "CANCELLED"}) == "COMPLETED"
    assert (out / "_progress" / "w00001-of00002.done.json").exists()
    assert samples_of(str(out)) == samples_of(str(latents))


def test_killed_array_task_resubmitted_alone(videos: Path, latents: Path, tmp_path: Path) -> None:
    out = tmp_path / "array_killed"
    array, merge = _encode_array(videos, out, tmp_path, TASKS="2")
    task = f"{array}_1"
    wait_state(task, {"RUNNING", "COMPLETED"})
    subprocess.run(["scancel", "--signal=KILL", task], check=True)
    wait_state(task, {"CANCELLED", "COMPLETED", "FAILED"})
    if job_state(task) == "COMPLETED":
        pytest.skip("the array task finished before it could be killed")
    wait_state(merge, {"CANCELLED", "GONE", "FAILED"})  # its dependency can never be met
    assert not (out / "index.json").exists()
    _, merge2 = _encode_array(videos, out, tmp_path, TASKS="2", ONLY="1")
    assert wait_state(merge2, {"COMPLETED", "FAILED", "CANCELLED"}) == "COMPLETED"
    assert samples_of(str(out)) == samples_of(str(latents))  # nothing missing, nothing twice
