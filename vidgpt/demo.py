"""The CPU demo: the whole workflow on a built-in synthetic dataset, in a few minutes on 2 cores.

    vidgpt-demo [--run-dir runs/demo_cpu] [--steps 600] [--device auto|cpu|cuda]

1. writes synthetic videos of bouncing shapes with captions (vidgpt-make-synthetic: the task TASK, shapes
   moving about 2 px per frame with anti-aliased edges) and a tiny T5;
2. encodes them with the identity codec into latent shards (vidgpt-encode);
3. trains the cpu-flavor model (rectified flow) with ZeRO-3 in 2 processes (torchrun + vidgpt-train,
   configs/demo_cpu.toml; on a GPU host with --device auto or cuda: one process per GPU, at most 2),
   preempts it halfway with SIGUSR1 (checkpoint, exit 75) and resumes it (--resume auto);
4. exports the EMA weights (vidgpt-export) and samples long videos, several times the training clip
   length, with the kv-cache, as the config's [eval.sampling] says (vidgpt-sample), into mp4 and GIF files;
5. measures the model on held-out scenes (vidgpt-eval): continued from 2 prompt frames for 4x the
   training clip, against the true continuation and the copy-the-last-frame baseline; prints the goal
   figures with the demo tier's goals (vidgpt.evaluation.DEMO_GOALS) and writes metrics.png and sheet.png.
Every step is one of the project's own commands, printed before it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from data_pipeline.synthetic import SyntheticTask
from data_pipeline.text import save_tiny_text_encoder
from vidgpt.config import ConfigError, load_config
from vidgpt.distributed import free_port
from vidgpt.evaluation.report import DEMO_GOALS, QUALITY_GOALS, Goals, goal_table

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_cpu.toml"
QUALITY_CONFIG = CONFIG.with_name("quality_cpu.toml")
TASK = SyntheticTask(speed=2.5, supersample=4)
"""The built-in task (issue 22): shapes moving about 2 px per frame at 32 px, edges drawn by area coverage,
so that copying the last frame cannot hide the motion. vidgpt-encode records it in the dataset's index, and
vidgpt-eval renders the held-out truth with it."""


@dataclass(frozen=True)
class Tier:
    """What one budget tier trains and how it is judged (issue 22: the 10-minute demo, the 60-minute
    quality run); training steps and everything else come from its config."""

    config: Path
    run_dir: str
    videos: int
    """Synthetic training videos (more steps need more videos, or the model overfits)."""
    multiples: int
    """vidgpt-eval's horizon, in training clip lengths."""
    clips: int
    """Held-out scenes vidgpt-eval continues."""
    goals: Goals


DEMO = Tier(CONFIG, "runs/demo_cpu", videos=512, multiples=4, clips=8, goals=DEMO_GOALS)
QUALITY = Tier(QUALITY_CONFIG, "runs/quality_cpu", videos=4096, multiples=8, clips=16, goals=QUALITY_GOALS)


def _run(cmd: list[str], **kw: object) -> None:
    print("+ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def _steps_done(run_dir: Path) -> int:
    path = run_dir / "losses.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vidgpt-demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quality", action="store_true",
                    help=f"the quality run instead (about 60 minutes on 2 CPU cores): {QUALITY.config.name}, "
                    f"{QUALITY.videos} videos, judged at {QUALITY.multiples}x against the quality tier's goals")
    ap.add_argument("--run-dir", help=f"where everything goes (default: {DEMO.run_dir}; --quality: {QUALITY.run_dir})")
    ap.add_argument("--steps", type=int, help="training steps (default: the config's training.steps)")
    ap.add_argument("--videos", type=int,
                    help=f"synthetic training videos (default: {DEMO.videos}; --quality: {QUALITY.videos})")
    ap.add_argument("--config", help=f"training config (default: configs/{DEMO.config.name}; --quality: "
                    f"configs/{QUALITY.config.name})")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="auto (default): the GPU when torch sees one, else the CPU; cpu: the CPU even on a GPU host")
    args = ap.parse_args(argv)
    tier = QUALITY if args.quality else DEMO
    args.config = args.config or str(tier.config)
    args.videos = args.videos or tier.videos
    try:
        args.steps = args.steps or load_config(args.config, []).training.steps
    except (ConfigError, OSError) as exc:
        ap.error(f"--config {args.config}: {str(exc).splitlines()[0]}")
    start = time.monotonic()
    run = Path(args.run_dir or tier.run_dir).resolve()
    data = run / "data"
    py = sys.executable
    device, nproc = demo_device(args.device)
    after = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {})}  # export, sample, eval
    env = {**after, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": device}
    print(f"vidgpt-demo: training on {device} with {nproc} process(es)", flush=True)

    if not (data / "latents" / "index.json").exists():
        _run([py, "-m", "data_pipeline.synthetic", str(data / "videos"), "--num", str(args.videos), "--size", "32",
              "--frames", "48", "--fps", "8", "--speed", str(TASK.speed), "--supersample", str(TASK.supersample)])
        save_tiny_text_encoder(data / "t5", dim=16)
        print(f"+ tiny random T5 text encoder -> {data / 't5'}", flush=True)
        _run([py, "-m", "data_pipeline.encode", str(data / "videos"), str(data / "latents"), "--codec", "identity",
              "--size", "32", "--min-frames", "16", "--max-frames", "48", "--text-encoder", str(data / "t5"),
              "--no-progress"], stdout=subprocess.DEVNULL)

    train = [py, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port()),
             "-m", "vidgpt.train", "--config", args.config, f"--run_dir={run}", f"--data.path={data / 'latents'}",
             f"--training.steps={args.steps}", "--resume", "auto"]
    if _steps_done(run) < args.steps // 2:
        status = run_preempted(train, env, run, args.steps // 2)
        if status.get("state") not in ("preempted", "finished"):
            print(f"vidgpt-demo: training failed (see the log above); {run / 'status.json'}: {status}", file=sys.stderr)
            return 1
        if status["state"] == "preempted":
            print(f"planned preemption at step {status['step']}: checkpoint saved, resuming with --resume auto",
                  flush=True)
        else:
            print(f"training finished at step {status['step']} before the planned preemption", flush=True)
    _run([*train], env=env)

    _run([py, "-m", "vidgpt.export", str(run), str(run / "export"), "--weights", "ema"], env=after)
    # both sample as the config's [eval.sampling] says (the export records it)
    _run([py, "-m", "vidgpt.sample", str(run / "export"), "--data", str(data / "latents"), "--out",
          str(run / "samples"), "--num", "2", "--frames", "46"], env=after)
    _run([py, "-m", "vidgpt.evaluation", str(run / "export"), "--out", str(run / "eval"), "--multiples",
          str(tier.multiples), "--clips", str(tier.clips)], env=after)
    report = json.loads((run / "eval" / "report.json").read_text())
    losses = [json.loads(line)["loss"] for line in (run / "losses.jsonl").read_text().splitlines()]
    print(
        f"\ndone in {time.monotonic() - start:.0f} s; loss {losses[0]:.3f} -> {sum(losses[-10:]) / 10:.3f}\n"
        f"  videos + captions:  {data / 'videos'}\n"
        f"  latent shards:      {data / 'latents'}  (index.json, failures.jsonl)\n"
        f"  resolved config:    {run / 'config.toml'}\n"
        f"  checkpoints:        {run / 'checkpoints'}\n"
        f"  tensorboard:        tensorboard --logdir {run / 'tensorboard'}\n"
        f"  exported weights:   {run / 'export'}\n"
        f"  samples (mp4, gif): {run / 'samples'}\n"
        f"  evaluation:         {run / 'eval' / 'report.json'}\n"
        f"  metric plot:        {run / 'eval' / 'metrics.png'}\n"
        f"  contact sheet:      {run / 'eval' / 'sheet.png'}  (rows: truth, then the model, per clip)\n\n"
        + goal_lines(report, (tier.goals,)),
        flush=True,
    )
    return 0


def run_preempted(train: list[str], env: dict[str, str], run: Path, stop_at: int) -> dict:
    """Run `train` (torchrun) until `stop_at` steps are logged, then send SIGUSR1 to its ranks, as SLURM's
    --signal=USR1 reaches the tasks; returns RUN/status.json. The ranks save a checkpoint and exit 75, which
    torchrun reports on stderr as its own failure, with a traceback (ChildFailedError): its stderr is passed
    through until the signal and held from then on. The launcher's report is dropped when the stop is the planned
    one (status "preempted", the ranks exited 75); otherwise everything held is printed."""
    print("+ " + shlex.join(train) + "   # preempted with SIGUSR1 halfway", flush=True)
    proc = subprocess.Popen(train, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    held: list[str] = []
    holding = threading.Event()

    def pump() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            if holding.is_set():
                held.append(line)
            else:
                sys.stderr.write(line)
                sys.stderr.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    while proc.poll() is None and _steps_done(run) < stop_at:
        time.sleep(0.2)
    holding.set()
    for rank_pid in _children(proc.pid):
        os.kill(rank_pid, signal.SIGUSR1)
    proc.wait()
    reader.join()
    status = json.loads((run / "status.json").read_text()) if (run / "status.json").exists() else {}
    codes = {int(c) for line in held for c in _EXITCODE.findall(line)}
    # 75: the trainer's exit after saving; -SIGTERM: a rank torchrun stopped once another had exited
    planned = status.get("state") == "preempted" and 75 in codes and codes <= {75, -signal.SIGTERM}
    sys.stderr.writelines(without_launcher_report(held) if planned else held)
    sys.stderr.flush()
    return status


_EXITCODE = re.compile(r"exitcode\s*:\s*(-?\d+)")
"""A failed rank's exit status in torchrun's report ("failed (exitcode: 75)", "exitcode  : 75 (pid: ...)")."""
_LAUNCHER_LOG = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ \S*torch/distributed/elastic/")
"""A log line of torchrun's agent ("E0612 10:00:00.000000 123 .../torch/distributed/elastic/...] failed ...")."""


def without_launcher_report(lines: list[str]) -> list[str]:
    """torchrun's stderr without its own report of failed ranks: its agent's log lines and the final
    ChildFailedError traceback (from the last "Traceback" line, when ChildFailedError follows it, to the end)."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    end = starts[-1] if starts and any("ChildFailedError" in line for line in lines[starts[-1]:]) else len(lines)
    return [line for line in lines[:end] if not _LAUNCHER_LOG.match(line)]


def demo_device(choice: str) -> tuple[str, int]:
    """(DS_ACCELERATOR value, processes) for --device: 2 CPU processes, or one per GPU up to 2 (NCCL
    cannot put two ranks on one GPU)."""
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if choice == "cuda" and not cuda:
        raise SystemExit("vidgpt-demo: --device cuda: torch sees no CUDA device "
                         f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
    if choice == "cpu" or not cuda:
        return "cpu", 2
    return "cuda", min(2, cuda)


def goal_lines(report: dict, tiers: tuple[Goals, ...] = (DEMO_GOALS,)) -> str:
    """The goal figures of the model on held-out scenes beside the copy-last-frame baseline's, with the
    goals of `tiers` (vidgpt.evaluation.GOALS)."""
    return (f"quality on {report['clips']} held-out scenes, continued from {report['prompt_frames']} frames for "
            f"{report['multiples']} x {report['clip_len']} frames:\n"
            + "\n".join(goal_table(report["summary"], "model", report["clip_len"], tiers)))


def _children(pid: int) -> list[int]:
    """Direct child processes of pid (from /proc: no extra dependency)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
