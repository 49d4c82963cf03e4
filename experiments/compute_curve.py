"""Quality against training compute, causal model and bidirectional baseline on one plot; prints one JSON
object.

    python -m experiments.longvideo --train-minutes 600 --steps 1100 ... > s1100.json   # one point each
    python -m experiments.compute_curve s550.json s1100.json s2200.json --out curve.png

Each input is the JSON `experiments.longvideo` prints (both arms trained for the same steps at the same
learning rate each step). The plot has one panel per figure (presence F1 and MSE at 4x and 8x the
clip, first-clip centroid error and PSNR), x = optimizer steps per model, with copy-last as a dashed
line; the JSON holds the same numbers, one row per input sorted by steps.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ARMS = ("causal_cache", "bidirectional", "copy_last")
PANELS = (("presence_f1", "4x"), ("presence_f1", "8x"), ("mse", "4x"), ("mse", "8x"), ("centroid_error", "1x"),
          ("psnr", "1x"))
"""(figure, horizon): each over the first m clips (the evaluator's `upto`)."""


def point(result: dict[str, Any]) -> dict[str, Any]:
    """One row: steps, training seconds per arm, and every panel's figure per arm (None when missing)."""
    if result.get("benchmark") != "longvideo":
        raise ValueError(f"not the output of experiments.longvideo (benchmark {result.get('benchmark')!r})")
    train = result["train"]
    row: dict[str, Any] = {"steps": train["causal"]["steps"],
                           "seconds": {"causal": train["causal"]["seconds"],
                                       "bidirectional": train["bidirectional"]["seconds"]},
                           "same_lr_each_step": train.get("same_lr_each_step")}
    for figure, horizon in PANELS:
        row[f"{figure}_{horizon}"] = {arm: result["figures"].get(arm, {}).get(horizon, {}).get("upto", {}).get(figure)
                                      for arm in ARMS}
    return row


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only for the picture

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    steps = [r["steps"] for r in rows]
    for ax, (figure, horizon) in zip(axes.flat, PANELS, strict=True):
        key = f"{figure}_{horizon}"
        for arm, style in zip(ARMS, ("o-", "s-", "k--"), strict=True):
            ys = [r[key][arm] for r in rows]
            if any(y is not None for y in ys):
                ax.plot(steps, ys, style, label=arm)
        ax.set_title(f"{figure} ({'first clip' if horizon == '1x' else 'up to ' + horizon})")
        ax.set_xlabel("optimizer steps per model")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.compute_curve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path, help="JSON outputs of experiments.longvideo, one per point")
    ap.add_argument("--out", type=Path, default=Path("runs/compute_curve/curve.png"), help="the plot (PNG)")
    args = ap.parse_args(argv)
    rows = []
    for path in args.results:
        try:
            rows.append(point(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError) as exc:
            ap.error(f"{path}: {exc}")
    rows.sort(key=lambda r: r["steps"])
    plot(rows, args.out)
    json.dump({"benchmark": "compute_curve", "plot": str(args.out), "points": rows}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
