"""Generate long videos from an exported model with the kv-cache sampler; writes mp4 and GIF files.

    vidgpt-sample exported/ --data runs/demo_cpu/data/latents --frames 48 --out runs/demo_cpu/samples

Prompt frames are the first `--prompt-frames` frames of clips from a latent dataset (with their
captions' embeddings when the dataset has them); generated latents are decoded with the dataset's
codec (identity: pixels; sd-vae: the VAE named in its index, or --vae).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from vidgpt.export import exported_diffusion, load_exported
from vidgpt.sampling import PRECISIONS, generate, sampling_autocast


def prompts_from_dataset(path: str, count: int, frames: int, seed: int) -> tuple[torch.Tensor, dict]:
    from data_pipeline.loader import LatentLoader, LoaderConfig

    loader = LatentLoader(LoaderConfig(path, num_frames=frames, batch_size=count, crop="whole", seed=seed))
    batch = next(iter(loader))
    return batch["latents"].float(), batch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vidgpt-sample", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="directory written by vidgpt-export")
    ap.add_argument("--data", help="latent dataset to take prompt frames from (default: the training data)")
    ap.add_argument("--out", default="samples", help="output directory (default: samples)")
    ap.add_argument("--num", type=int, default=2, help="videos (default: 2)")
    ap.add_argument("--prompt-frames", type=int, default=1, help="prompt frames per video (default: 1)")
    ap.add_argument("--frames", type=int, default=32, help="frames to generate after the prompt (default: 32)")
    ap.add_argument("--chunk", type=int, default=4, help="frames per autoregressive chunk (default: 4)")
    ap.add_argument("--window", type=int, default=None, help="kv-cache window (default: training clip length - chunk)")
    ap.add_argument("--steps", type=int, default=25, help="denoising steps per chunk (default: 25)")
    ap.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (default: 1)")
    ap.add_argument("--fps", type=float, default=8.0, help="frame rate of the written videos (default: 8)")
    ap.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    ap.add_argument("--vae", help="sd-vae datasets: VAE to decode with (default: the one in the dataset index)")
    ap.add_argument("--no-cache", action="store_true", help="recompute the window every step (reference)")
    ap.add_argument("--precision", choices=PRECISIONS, default="auto",
                    help="network precision: auto (default) is bf16 on GPUs of compute capability >= 8.0, fp32 "
                    "elsewhere; the sampler's state stays fp32")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the network's blocks first (pays off on GPUs for long videos)")
    args = ap.parse_args(argv)

    from data_pipeline.codecs import build_codec
    from data_pipeline.index import read_json
    from data_pipeline.storage import join
    from data_pipeline.video import write_gif, write_video

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, info = load_exported(Path(args.model), device)
    if args.compile:
        model.compile_blocks()
    data_path = args.data or info.get("data", {}).get("path")
    if not data_path:
        print("vidgpt-sample: error: no --data given and the checkpoint names no dataset", file=sys.stderr)
        return 2
    prompt, batch = prompts_from_dataset(data_path, args.num, args.prompt_frames, args.seed)
    codec_info = read_json(join(data_path, "index.json"))["codec"]
    codec = build_codec(codec_info["name"], vae=args.vae or codec_info.get("vae"))
    text = text_mask = None
    if model.cfg.text_dim and "text" in batch:
        text, text_mask = batch["text"].float().to(device), batch["text_mask"].to(device)
    diffusion = exported_diffusion(info)
    train_frames = info.get("data", {}).get("num_frames", args.chunk + 8)
    window = args.window or max(1, train_frames - args.chunk)
    video = generate(
        model, diffusion, prompt.to(device), args.frames, chunk=args.chunk, window=window, steps=args.steps,
        text=text, text_mask=text_mask, cfg_scale=args.cfg_scale if text is not None else 1.0,
        use_cache=not args.no_cache, generator=torch.Generator(device).manual_seed(args.seed),
        autocast=sampling_autocast(args.precision, device),
    )  # (B, P + N, C, H, W)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(video.shape[0]):
        frames = codec.decode(video[i].float().cpu().numpy())  # (T, H, W, 3) uint8
        if frames.shape[1] % 2 or frames.shape[2] % 2:
            frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)))
        write_video(out / f"sample_{i:03d}.mp4", frames, args.fps)
        write_gif(out / f"sample_{i:03d}.gif", frames, args.fps)
        caption = batch["captions"][i] if batch.get("captions") else None
        print(f"{out / f'sample_{i:03d}.mp4'} (+ .gif): {frames.shape[0]} frames"
              + (f", prompt clip captioned {caption!r}" if caption else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
