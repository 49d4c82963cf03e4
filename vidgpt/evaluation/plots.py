"""Pictures of an evaluation: metrics.png (per-frame curves and per-chunk Fréchet distances) and
sheet.png (truth and generated frames side by side)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vidgpt import metrics
from vidgpt.evaluation.report import COPY_LAST, FRAME_METRICS, Report


def write_plot(report: Report, path: Path) -> Path:
    """PNG of one subplot per metric against frame index, one line per method (copy_last dashed), the
    truth's garbage as the floor, the Step-metric Fréchet distances per chunk; prompt frames shaded."""
    import matplotlib  # optional heavy dependency: only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {name: method.per_frame.to_json() for name, method in report.methods.items()}
    names = [m for m in FRAME_METRICS if m in curves[COPY_LAST]]
    panels = names + list(report.frechet_metrics)
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    frames = np.arange(report.frames)
    P = report.prompt_frames
    for ax, panel in zip(axes.flat, panels):
        for name, method in report.methods.items():
            style = {"linestyle": "--", "color": "gray"} if name == COPY_LAST else {}
            if panel in names:
                ax.plot(frames, np.array(curves[name][panel], dtype=float), label=name, **style)
            else:
                x = [np.mean(c.frames) - 0.5 for c in method.per_chunk]
                ax.plot(x, [c.frechet[panel] for c in method.per_chunk], marker="o", label=name, **style)
        if panel == "psnr":  # identical (prompt) frames sit at the cap; keep the generated ones readable
            generated = [v for c in curves.values() for v in c["psnr"][P:] if math.isfinite(v)]
            if generated and max(generated) < metrics.PSNR_CAP:
                ax.set_ylim(min(generated) - 2, max(generated) + 8)
        if panel == "garbage" and report.truth is not None:
            ax.plot(frames, report.truth.per_frame_garbage, color="black", linewidth=1, label="truth (floor)")
        ax.axvspan(-0.5, P - 0.5, color="gold", alpha=0.2, linewidth=0)
        for start, _ in report.chunks[1:]:
            ax.axvline(start - 0.5, color="lightgray", linewidth=0.8)
        ax.set_title(panel + (" (per chunk)" if panel not in names else ""))
        ax.set_xlabel("frame")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{report.clips} clips, prompt {P} frames (shaded), chunks of {report.clip_len} frames")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_contact_sheet(
    truth: np.ndarray,
    videos: Mapping[str, np.ndarray],
    path: Path,
    *,
    every: int | None = None,
    clips: int = 2,
    prompt_frames: int = 0,
) -> Path:
    """PNG of truth and each method's frames, one row each, for the first `clips` clips.

    truth and videos: uint8 (N, T, H, W, 3). Columns: the prompt frames, then every `every`-th frame
    (None: about 12 columns) and the last; frames upscaled (nearest neighbour) to >= 64 px; prompt
    frames framed in yellow; frame indices above, row names on the left."""
    n, T, H, W, _ = truth.shape
    every = every or max(1, math.ceil((T - prompt_frames) / 12))
    columns = sorted(set(range(prompt_frames)) | set(range(prompt_frames + every - 1, T, every)) | {T - 1})
    scale = max(1, math.ceil(64 / max(H, W)))
    cell_h, cell_w, pad, label_w, header = H * scale, W * scale, 4, 90, 14
    rows = [("truth", truth), *videos.items()]
    shown = min(clips, n)
    block_h = header + len(rows) * (cell_h + pad)
    sheet = Image.new("RGB", (label_w + len(columns) * (cell_w + pad), shown * (block_h + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c in range(shown):
        top = c * (block_h + pad)
        draw.text((2, top + 2), f"clip {c}", fill=(0, 0, 0))
        for col, t in enumerate(columns):
            draw.text((label_w + col * (cell_w + pad), top + 2), str(t), fill=(0, 0, 0))
        for r, (name, video) in enumerate(rows):
            y = top + header + r * (cell_h + pad)
            draw.text((2, y + cell_h // 2 - 5), name[:14], fill=(0, 0, 0))
            for col, t in enumerate(columns):
                x = label_w + col * (cell_w + pad)
                frame = Image.fromarray(np.ascontiguousarray(video[c, t])).resize((cell_w, cell_h), Image.NEAREST)
                sheet.paste(frame, (x, y))
                if t < prompt_frames:
                    draw.rectangle([x - 2, y - 2, x + cell_w + 1, y + cell_h + 1], outline=(240, 200, 0), width=2)
    path = Path(path)
    sheet.save(path)
    return path
