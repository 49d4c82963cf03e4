"""Train ViD-GPT with DeepSpeed ZeRO-3 on latent shards; resumes exactly from sharded checkpoints.

    python -m vidgpt.train --config configs/demo_cpu.toml [--section.key=value ...] [--resume auto|PATH]
    torchrun --nproc_per_node 8 -m vidgpt.train --config configs/xl.toml --resume auto
    srun python -m vidgpt.train --config ...          # one task per GPU; SLURM variables give the ranks

One trainer per run directory: rank 0 holds RUN/run.lock while it runs (a second trainer is refused; the
lock of a trainer that is gone, or of a requeued SLURM job's earlier run, is taken over). A run directory
that holds checkpoints is only ever continued (--resume auto), never started over.
Exit status: 0 finished; 75 stopped on SIGUSR1/SIGTERM/SIGINT (requeue and run again with --resume auto:
a checkpoint was saved, or the signal came during start-up, before the first step, and the checkpoint on
disk is where to go on from); 1 failed (the message names the reason: data, checkpoint, training, another
trainer); 2 bad configuration. Rank 0 also writes RUN/status.json ({"state": "finished" | "preempted",
"step": N}) for launchers such as torchrun that report any non-zero rank status as their own failure.
"""

from __future__ import annotations

import argparse

from vidgpt.components.step_guard import StopFlag


def main(argv: list[str] | None = None) -> int:
    stop = StopFlag()  # first, before the seconds of importing torch and DeepSpeed: a signal during start-up
    # is a preemption (exit 75, status.json), never a process killed by SIGUSR1/SIGTERM and a lost requeue
    ap = argparse.ArgumentParser(prog="vidgpt-train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="TOML run config (see configs/ and docs/config.md)")
    ap.add_argument("--resume", default=None,
                    help="auto: continue from RUN/checkpoints/latest, or when that pointer is lost the newest complete "
                         "step on disk (a damaged latest is an error naming the newest complete one); auto-fallback: "
                         "resume that newest complete one instead; PATH: a checkpoint step directory. Without it the "
                         "run directory must hold no checkpoint")
    ap.add_argument("--break-lock", action="store_true",
                    help="take over RUN/run.lock although its holder looks alive: only when you know that trainer is "
                         "dead (a lock its holder stopped refreshing 5 minutes ago is taken over anyway)")
    args, overrides = ap.parse_known_args(argv)
    from vidgpt.trainer import command  # noqa: PLC0415 - torch and DeepSpeed load after the signal handlers

    return command(args.config, overrides, args.resume, stop, break_lock=args.break_lock)


if __name__ == "__main__":
    raise SystemExit(main())
