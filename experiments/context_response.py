"""How does one sampled frame answer a flawed context? Area and error of frame f from chosen 2-frame contexts.

    python -m experiments.context_response runs/quality_cpu/export --clips 16 [--blur 0.5] [--positions 4 8 12]

`experiments.area_bias` showed that from true frames the model keeps shapes' areas, while one frame of its own
in the context is enough to start the rollout's shrinking. Two readings: the model copies the flaw of its
context (the next frame is as flawed as its own frame, and the decay is the flaws adding up), or it reads the
difference between a true and an own frame as a trend and continues it (the next frame is worse than its own
context frame, and the decay compounds). This samples frame f of held-out scenes, at several positions f, from
2-frame contexts (the prompt length the goals use) built of true frames T, the model's own frames O (O(g):
sampled from the true frames g-2 and g-1) and blurred true frames B (a Gaussian blur of `--blur` latent pixels,
a flaw of known kind):

    true [T, T] | own_last [T, O] | own_both [O, O] | blur_last [T, B] | blur_both [B, B]

Every context is sampled with the same noise. Per context it reports the area ratio (`area_bias.area_ratio`)
of the sampled frame f and of the context's last frame against the truth, over all shapes and over the smaller
half, and the sampled frame's MSE. A trend is read where `*_last` gives a smaller frame f than `*_both`, whose
last context frame is just as flawed. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from experiments.area_bias import HeldOut, area_ratio, colour_areas, small_shapes
from vidgpt import metrics
from vidgpt.sampling import generate_as

CONTEXTS = ("true", "own_last", "own_both", "blur_last", "blur_both")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each channel of (..., C, h, w) blurred by a normalised Gaussian of `sigma` pixels (reflected edges);
    sigma 0: x unchanged."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    lead, (c, h, w) = x.shape[:-3], x.shape[-3:]
    y = x.reshape(-1, c, h, w)
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y.reshape(*lead, c, h, w)


def contexts(true: torch.Tensor, own: torch.Tensor, blurred: torch.Tensor) -> dict[str, torch.Tensor]:
    """The 2-frame contexts from (B, 2, C, h, w) true frames and the own and blurred versions of the same frames."""
    def mix(first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        return torch.stack([first[:, 0], last[:, 1]], dim=1)

    return {"true": true, "own_last": mix(true, own), "own_both": own,
            "blur_last": mix(true, blurred), "blur_both": blurred}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--positions", type=int, nargs="+", default=[4, 8, 12],
                    help="the frames f sampled, counted from the scene's start (each >= 4)")
    ap.add_argument("--blur", type=float, default=0.5, help="sigma of the blurred context, latent pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speed", type=float, default=2.5)
    ap.add_argument("--supersample", type=int, default=4)
    args = ap.parse_args(argv)
    if min(args.positions) < 4:
        ap.error(f"--positions {args.positions}: each must be >= 4 (own frame f-2 is sampled from f-4 and f-3)")
    # at least frames 0..max(positions), whatever the export's own prompt length (HeldOut counts after it)
    held = HeldOut.load(args.export, args.clips, max(args.positions) + 1, speed=args.speed,
                        supersample=args.supersample)
    if held.prompt_frames != 2:
        print(f"note: the export samples from {held.prompt_frames} prompt frames; this uses 2", flush=True)
    sampling, model, diffusion = held.sampling, held.model, held.diffusion
    t0 = time.time()

    def sample(context: torch.Tensor, seed: int) -> torch.Tensor:  # (B, 2, ...) -> (B, 1, ...): the next frame
        gen = torch.Generator().manual_seed(seed)
        return generate_as(sampling, model, diffusion, context, 1, generator=gen)[:, -1:]

    lat = held.latents
    true = torch.cat([lat[:, f - 2 : f] for f in args.positions])  # (P*N, 2, C, h, w), position-major
    own = torch.cat([torch.cat([sample(lat[:, g - 2 : g], args.seed + 1 + g) for g in (f - 2, f - 1)], dim=1)
                     for f in args.positions])
    blurred = gaussian_blur(true, args.blur)
    target_px = np.concatenate([held.truth[:, f : f + 1] for f in args.positions])  # (P*N, 1, H, W, 3)
    last_px = np.concatenate([held.truth[:, f - 1 : f] for f in args.positions])
    backgrounds = held.backgrounds * len(args.positions)
    true_areas = colour_areas(target_px, backgrounds, held.spec)  # (P*N, 1, K)
    true_last_areas = colour_areas(last_px, backgrounds, held.spec)
    small = small_shapes(true_areas)
    out: dict = {"experiment": "context_response", "export": str(args.export), "clips": args.clips,
                 "positions": args.positions, "blur": args.blur, "steps": sampling.steps,
                 "context_scale": sampling.context_scale, "seed": args.seed}
    for name, context in contexts(true, own, blurred).items():
        frame_px = held.to_pixels(sample(context, args.seed))
        context_px = held.to_pixels(context[:, 1:])
        areas, context_areas = colour_areas(frame_px, backgrounds, held.spec), colour_areas(context_px, backgrounds,
                                                                                            held.spec)
        out[name] = {
            "area_ratio": round(area_ratio(areas, true_areas)[0], 4),
            "small_area_ratio": round(area_ratio(areas, true_areas, small)[0], 4),
            "context_last_area_ratio": round(area_ratio(context_areas, true_last_areas)[0], 4),
            "context_last_small_area_ratio": round(area_ratio(context_areas, true_last_areas, small)[0], 4),
            "mse": round(float(metrics.mse(frame_px, target_px).mean()), 5),
        }
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
