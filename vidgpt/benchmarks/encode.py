"""Throughput of the encoding tool and how busy it keeps the codec.

    vidgpt-bench encode            # prints one JSON object

Makes synthetic mp4 videos, builds a randomly initialised AutoencoderKL (the `sd-vae` codec: compute
bound, like the real VAE on a GPU) and encodes the videos with the real tool: decoding in a pool of
processes running ahead of the codec. Reports videos/s, frames/s and `codec_busy_fraction`: the share
of wall time spent inside the codec's encode (goal >= 0.9: the codec never waits on decoding, nor on
the text encoder, which embeds captions ahead in batches of `--text-batch-size`: `text_fraction` is its
share). The videos come with captions and a tiny T5. The identity codec is measured too, to show the
decode-bound rate (`identity_frames_s`).

    vidgpt-bench encode --codec wan-vae --input VIDEOS/ --fps 8   # a causal video VAE on your own clips

`--codec wan-vae` builds a random AutoencoderKLWan instead (the Wan 2.1 VAE's layout, 16 latent
channels, 8x spatial and 4x temporal, with `--vae-width` as its base width: the real one's is 96);
`--input` encodes a directory of real videos (resampled to `--fps`) instead of synthetic ones, with
both codecs, so `frames_s` / `identity_frames_s` compares the VAE with the decode-bound rate on the
same clips. Frame counts are video frames.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from data_pipeline.cli_types import finite_float
from data_pipeline.encode import EncodeConfig, Encoder
from data_pipeline.synthetic import make_synthetic_videos
from data_pipeline.text import save_tiny_text_encoder


def tiny_vae(path: Path, width: int) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(
        block_out_channels=(width, 2 * width, 2 * width, 2 * width),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2, norm_num_groups=min(32, width), latent_channels=4, sample_size=64,
        scaling_factor=0.18215,
    ).save_pretrained(path)


def tiny_wan_vae(path: Path, width: int) -> None:
    """A random AutoencoderKLWan with the Wan 2.1 VAE's layout (dim_mult 1,2,4,4, 2 res blocks, 16 latent
    channels and their normalisation) and base width `width`."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    AutoencoderKLWan(base_dim=width, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2).save_pretrained(path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="vidgpt-bench-encode-"))
    try:
        if args.input:
            source, text_encoder = args.input, None
        else:
            videos = work / "videos"
            make_synthetic_videos(videos, args.videos, size=args.size, frames=args.frames, fps=8, seed=0)
            save_tiny_text_encoder(work / "t5", dim=64)
            source, text_encoder = str(videos / "manifest.jsonl"), str(work / "t5")
        (tiny_wan_vae if args.codec == "wan-vae" else tiny_vae)(work / "vae", args.vae_width)
        common = dict(input=source, text_encoder=text_encoder, fps=args.fps,
                      text_batch_size=args.text_batch_size, height=args.size, width=args.size, min_frames=8,
                      max_frames=args.frames,
                      decode_workers=args.decode_workers, prefetch=2 * max(1, args.decode_workers), progress=False,
                      shard_samples=16, device="cpu", batch_size=args.batch_size)
        vae = Encoder(EncodeConfig(output=str(work / "out-vae"), codec=args.codec, vae=str(work / "vae"), **common)).run()
        ident = Encoder(EncodeConfig(output=str(work / "out-id"), codec="identity", **common)).run()
        w = args.vae_width
        return {
            "benchmark": "encode",
            "input": args.input or "synthetic", "videos": vae.ok, "max_frames_per_clip": args.frames, "size": args.size,
            "fps": args.fps,
            "codec": f"sd-vae (random AutoencoderKL, block_out_channels {[w, 2 * w, 2 * w, 2 * w]})"
                     if args.codec == "sd-vae" else
                     f"wan-vae (random AutoencoderKLWan, base_dim {w}, dim_mult [1, 2, 4, 4], z_dim 16)",
            "decode_workers": args.decode_workers, "torch_threads": torch.get_num_threads(),
            "wall_s": round(vae.wall_s, 3),
            "videos_s": round(vae.ok / vae.wall_s, 3),
            "frames_s": round(vae.frames / vae.wall_s, 2),
            "codec_busy_fraction": round(vae.codec_s / vae.wall_s, 4),
            "text_fraction": round(vae.text_s / vae.wall_s, 4),
            "text_batch_size": args.text_batch_size if text_encoder else None,
            "batch_size": args.batch_size,
            "identity_videos_s": round(ident.ok / ident.wall_s, 2),
            "identity_frames_s": round(ident.frames / ident.wall_s, 1),
            "vae_vs_identity": round((vae.frames / vae.wall_s) / (ident.frames / ident.wall_s), 4),
            "clips": vae.clips, "shard_bytes": vae.bytes, "failed": vae.failed,
            "goal_codec_busy": vae.codec_s / vae.wall_s >= 0.9,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vidgpt-bench encode", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codec", choices=("sd-vae", "wan-vae"), default="sd-vae",
                    help="the VAE codec measured (random weights; default: sd-vae)")
    ap.add_argument("--input", help="a directory of real videos to encode (default: synthetic videos with captions)")
    ap.add_argument("--fps", type=finite_float, default=None, help="resample --input to this rate (default: keep it)")
    ap.add_argument("--videos", type=int, default=32, help="synthetic videos (default: 32)")
    ap.add_argument("--frames", type=int, default=32,
                    help="frames per synthetic video, and most frames per clip (default: 32; wan-vae: cut to 1 + 4k)")
    ap.add_argument("--size", type=int, default=64, help="frame size (default: 64)")
    ap.add_argument("--decode-workers", type=int, default=1, help="decoding processes (default: 1)")
    ap.add_argument("--vae-width", type=int, default=32, help="channels of the VAE's first block (default: 32)")
    ap.add_argument("--batch-size", type=int, default=8, help="frames per VAE batch (default: 8)")
    ap.add_argument("--text-batch-size", type=int, default=32, help="captions per T5 batch (default: 32)")
    args = ap.parse_args(argv)
    if args.input and not Path(args.input).is_dir():
        ap.error(f"--input {args.input}: no such directory")
    json.dump(run(args), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
