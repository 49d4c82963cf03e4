"""Generate long videos from an exported model with the kv-cache sampler; writes mp4 and GIF files.

    vidgpt-sample exported/ --data runs/demo_cpu/data/latents --frames 48 --out runs/demo_cpu/samples
    vidgpt-sample exported/ --prompt my_clip.mp4 --caption "a red ball bouncing" --frames 48
    vidgpt-sample exported/ --prompt photo.png --frames 32          # animate an image
    vidgpt-sample exported/ --prompts prompts.jsonl                 # {"path": ..., "caption": ...} per line
    vidgpt-sample exported/ --caption "a red ball bouncing"         # text to video

Prompt frames come either from a latent dataset (the first `--prompt-frames` frames of its clips, with
their captions' embeddings when it has them), or from your own files: the last `--prompt-frames`
frames of a video, or an image (one frame), resized and cropped as the training data was, encoded
with the model's codec; a `--caption` is embedded with the model's text encoder. The export records
both (vidgpt-export reads them from the training dataset's index). Generated latents are decoded
with the codec (identity: pixels; sd-vae: the VAE named in the export or the dataset index, or --vae).
A caption without a prompt file (`--caption` alone, or a --prompts line without "path") is text to
video: the first chunk starts from noise, which needs a model trained with 0-frame prompts
(diffusion.prompt_min_len = 0); other models are refused with a line saying so.
The sampling flags are those of vidgpt-eval (`vidgpt.sampling.SamplingSpec`); chunk and window
default to values derived from the training clip length.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipeline.cli_types import finite_float
from data_pipeline.codecs import Codec
from data_pipeline.index import DatasetIndexError
from data_pipeline.loader import DataError, LatentLoader, LoaderConfig, error_line
from data_pipeline.storage import StorageError
from data_pipeline.text import TextEncoder
from data_pipeline.video import nearest_bucket, write_gif, write_video
from vidgpt.checkpoint import CheckpointError
from vidgpt.cli import OneLineParser, add_dataclass_options, dataclass_from_options
from vidgpt.diffusion import Diffusion
from vidgpt.export import (
    add_eta_option,
    exported_diffusion,
    exported_sampling,
    load_exported,
    sampling_refusal,
    without_prompt_frames,
)
from vidgpt.latent_space import codec_of, dataset_codec, text_encoder_for
from vidgpt.prompt_files import PromptError, PromptItem, load_prompt_frames, prompt_size, read_prompt_list
from vidgpt.sampling import SamplingSpec, generate_as, sampling_autocast


def prompts_from_dataset(path: str, count: int, frames: int, seed: int) -> tuple[torch.Tensor, dict]:
    loader = LatentLoader(LoaderConfig(path, num_frames=frames, batch_size=count, crop="whole", seed=seed))
    batch = next(iter(loader))
    return batch["latents"].float(), batch


def embed_caption(encoder: TextEncoder, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, L, D) embedding and (1, L) mask of one caption; longer than the encoder's max_length tokens:
    truncated, with a warning on stderr."""
    tokens = len(encoder.tokenizer(caption)["input_ids"])
    if tokens > encoder.max_length:
        print(f"vidgpt-sample: warning: caption {caption[:40]!r}... has {tokens} tokens; the model takes "
              f"{encoder.max_length}, the rest is dropped", file=sys.stderr)
    emb = torch.from_numpy(encoder.encode([caption])[0]).float()[None]  # (1, L, D)
    return emb, torch.ones(emb.shape[:2], dtype=torch.bool)


def with_chunk_and_window(sampling: SamplingSpec, clip_len: int | None) -> SamplingSpec:
    """chunk and window filled in when not given: from the training clip length as
    `SamplingSpec.for_clip_len` derives them (without its refusal of prompts as long as the clip: a
    prompt is continued whatever its length); an export that names no clip length: chunk 4, window 8."""
    if clip_len:
        return sampling.for_clip_len(clip_len, refuse_long_prompts=False)
    chunk = sampling.chunk or 4
    return replace(sampling, chunk=chunk, window=sampling.window or 8)


def _parser() -> OneLineParser:
    ap = OneLineParser(prog="vidgpt-sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="directory written by vidgpt-export")
    prompt_source = ap.add_mutually_exclusive_group()
    prompt_source.add_argument("--prompt", help="your own video (continued from its last --prompt-frames frames) or "
                               "image (animated from it) instead of --data")
    prompt_source.add_argument("--prompts", help='a JSON-lines file of {"path": VIDEO_OR_IMAGE, "caption": TEXT}, '
                               "one video each")
    ap.add_argument("--caption", help="caption of --prompt, embedded with the model's text encoder; alone: text to "
                    "video from noise (models trained with diffusion.prompt_min_len = 0)")
    ap.add_argument("--text-encoder", help="T5 directory for captions (default: the one the export names)")
    ap.add_argument("--data", help="latent dataset to take prompt frames from (default: the training data)")
    ap.add_argument("--out", default="samples", help="output directory (default: samples)")
    ap.add_argument("--num", type=int, default=2, help="videos (default: 2)")
    ap.add_argument("--frames", type=int, default=32,
                    help="frames to generate after the prompt (default: 32); latent frames with a video VAE, "
                         "each of which decodes to 4 video frames")
    ap.add_argument("--fps", type=finite_float, default=8.0, help="frame rate of the written videos (default: 8)")
    ap.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                    help="frame size of --prompt/--prompts/--caption videos (default: the training bucket nearest "
                         "each prompt's aspect ratio, or the training size); multiples of the model's patch x the "
                         "codec's downsampling")
    ap.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    ap.add_argument("--vae", help="sd-vae / wan-vae models: where the VAE is on this machine (default: the location "
                    "the dataset index or export records); it must be the VAE the latents were encoded with")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the network's blocks first (pays off on GPUs for long videos)")
    add_dataclass_options(ap, SamplingSpec, inherited="the export's [eval.sampling]")
    add_eta_option(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C ends sampling with the finished videos kept, also when the process was started with SIGINT
    # ignored (from a script's background job), which would otherwise leave it no way to be interrupted
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ap = _parser()
    args = ap.parse_args(argv)
    if args.num < 1:
        ap.error(f"--num must be >= 1, got {args.num}")
    if args.frames < 0:
        ap.error(f"--frames must be >= 0, got {args.frames}")
    if args.fps <= 0:
        ap.error(f"--fps must be > 0, got {args.fps}")
    config = Path(args.model) / "config.json"
    if not config.is_file():
        ap.error(f"{args.model}: not an export directory (no config.json; write one with vidgpt-export)")
    try:
        info = json.loads(config.read_text())
        sampling = dataclass_from_options(SamplingSpec, args, base=exported_sampling(info))
        diffusion = exported_diffusion(info, eta=args.eta)
    except (ValueError, CheckpointError) as exc:
        ap.error(str(exc))
    if args.caption is not None and args.prompts is not None:
        ap.error("--caption goes with --prompt or alone; a --prompts file has a caption per line")
    started = time.time()
    try:
        if args.prompt is not None or args.prompts is not None or args.caption is not None:
            return _sample_user_prompts(ap, args, sampling, diffusion)
        return _sample_dataset_prompts(ap, args, sampling, diffusion)
    except KeyboardInterrupt:  # the videos finished so far stay; say where
        out = Path(args.out)
        done = sorted(p.name for p in out.glob("sample_*.mp4") if p.stat().st_mtime >= started) if out.is_dir() else []
        where = f"{len(done)} finished video(s) are in {out} ({done[0]} to {done[-1]})" if done else "no video was finished"
        print(f"\nvidgpt-sample: interrupted; {where}", file=sys.stderr)
        return 130


def _clip_len(info: dict[str, Any]) -> int | None:
    """The training clip length the export records."""
    return info.get("data", {}).get("num_frames") or (info.get("sampling") or {}).get("clip_len")


def _sample_dataset_prompts(ap: OneLineParser, args: argparse.Namespace, sampling: SamplingSpec,
                            diffusion: Diffusion) -> int:
    """The first --prompt-frames frames of --data's clips (default: the training data), with their captions."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, info = load_exported(Path(args.model), device)
    if refusal := sampling_refusal(sampling, info, args.model):
        ap.error(refusal)
    if args.compile:
        model.compile_blocks()
    if args.size:
        ap.error("--size sets the frame size of your own prompts (--prompt, --prompts, --caption); clips of a "
                 "latent dataset keep theirs")
    data_path = args.data or info.get("data", {}).get("path")
    if not data_path:
        print("vidgpt-sample: error: no --data given and the checkpoint names no dataset", file=sys.stderr)
        return 2
    spec = with_chunk_and_window(sampling, _clip_len(info))
    try:
        prompt, batch = prompts_from_dataset(data_path, args.num, spec.prompt_frames, args.seed)
        codec = dataset_codec(data_path, vae=args.vae, model=info)
    except (DataError, DatasetIndexError, StorageError) as exc:
        ap.error(f"--data {data_path}: {error_line(exc)}")
    except ValueError as exc:  # the codec: its VAE not loadable here, or not the model's
        ap.error(str(exc).splitlines()[0])
    if not bool(batch["valid"].all()):
        shortest = int(batch["valid"].sum(dim=1).min())
        ap.error(f"--prompt-frames {spec.prompt_frames}: a clip of {data_path} has only {shortest} frames "
                 "(the rest would be padding)")
    text = text_mask = None
    if model.cfg.text_dim and "text" in batch:
        text, text_mask = batch["text"].float().to(device), batch["text_mask"].to(device)
        if text.shape[1] > model.cfg.text_len:
            print(f"vidgpt-sample: warning: the dataset's captions have up to {text.shape[1]} tokens; the model "
                  f"takes {model.cfg.text_len}, the rest is dropped", file=sys.stderr)
            text, text_mask = text[:, : model.cfg.text_len], text_mask[:, : model.cfg.text_len]
    decoding = Decoding(codec, prompt.shape[0])
    generate_as(
        spec, model, diffusion, prompt.to(device), args.frames, text=text, text_mask=text_mask,
        generator=torch.Generator(device).manual_seed(args.seed), autocast=sampling_autocast(spec.precision, device),
        on_chunk=decoding,
    )  # (B, P + N, C, H, W), decoded as it was generated
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(prompt.shape[0]):
        frames = _even(decoding.video(i))  # (T, H, W, 3) uint8
        write_video(out / f"sample_{i:03d}.mp4", frames, args.fps)
        write_gif(out / f"sample_{i:03d}.gif", frames, args.fps)
        caption = batch["captions"][i] if batch.get("captions") else None
        print(f"{out / f'sample_{i:03d}.mp4'} (+ .gif): {frames.shape[0]} frames"
              + (f", prompt clip captioned {caption!r}" if caption else ""))
    return 0


def _sample_user_prompts(ap: OneLineParser, args: argparse.Namespace, sampling: SamplingSpec,
                         diffusion: Diffusion) -> int:
    """--prompt / --prompts / --caption: the user's own files, with the export's codec, size, fps and text encoder."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, info = load_exported(Path(args.model), device)
    recorded = info.get("sampling") or {}
    codec_info, size = recorded.get("codec"), recorded.get("size")
    if not codec_info or not size:
        ap.error(f"{args.model}: the export records no codec and frame size (exported before they were recorded, "
                 "or from a run whose dataset index is not readable here); re-export it, or sample with --data")
    try:
        codec = codec_of(codec_info, vae=args.vae, device=device)
    except (ValueError, OSError) as exc:
        ap.error(f"{args.model}: cannot build its codec: {str(exc).splitlines()[0]}")
    if codec.latent_channels != model.cfg.in_channels:
        ap.error(f"codec {codec_info['name']!r} gives {codec.latent_channels} latent channels but the model takes "
                 f"{model.cfg.in_channels}")
    multiple = model.cfg.patch * codec.downsample
    if args.size and (min(args.size) < multiple or args.size[0] % multiple or args.size[1] % multiple):
        ap.error(f"--size {args.size[0]} {args.size[1]}: must be multiples of {multiple} (the model's patch "
                 f"{model.cfg.patch} x the codec's downsampling {codec.downsample}), at least one patch")
    buckets = tuple((int(h), int(w)) for h, w in recorded.get("buckets") or [])
    try:
        items = read_prompt_list(args.prompts) if args.prompts else [PromptItem(args.prompt, args.caption)]
        # each video's frame size: --size, else the training bucket nearest the prompt's aspect ratio, else
        # the training size
        sizes = [tuple(args.size) if args.size else
                 nearest_bucket(*prompt_size(it.path), buckets) if (buckets and it.path) else (size[0], size[1])
                 for it in items]
        frames = [np.zeros((0, hw[0], hw[1], 3), dtype=np.uint8) if it.path is None  # text to video: no prompt
                  else load_prompt_frames(it.path, size=hw, fps=recorded.get("fps"),
                                          last=codec.pixel_frames(sampling.prompt_frames))
                  for it, hw in zip(items, sizes, strict=True)]
    except PromptError as exc:
        ap.error(str(exc))
    for item, f in zip(items, frames, strict=True):
        if item.path is not None and codec.on_grid(len(f)) != len(f):
            ap.error(f"{item.path}: {len(f)} frames, but the {codec.name} codec takes {codec.grid_text()}; "
                     f"--prompt-frames {sampling.prompt_frames} (latent frames) needs "
                     f"{codec.pixel_frames(sampling.prompt_frames)}: give a longer clip or fewer --prompt-frames")
    unguided = without_prompt_frames(info, args.model)
    if any(it.path is None for it in items) and unguided:
        ap.error(f"text to video (a caption without a prompt file) needs a model trained with 0-frame prompts; "
                 f"{unguided}: give it a --prompt")
    if refusal := sampling_refusal(sampling, info, args.model):
        ap.error(refusal)
    if sampling.sink and (shortest := min(codec.latent_frames(len(f)) for f in frames)) < sampling.sink:
        ap.error(f"--sink {sampling.sink}: a prompt has only {shortest} frames (the sink holds prompt frames)")
    if any(it.path is None for it in items) and not model.cfg.text_dim:
        ap.error(f"text to video needs a text-conditioned model; {args.model} has text_dim 0")
    encoder_path = args.text_encoder or recorded.get("text_encoder")
    if any(it.caption for it in items) and model.cfg.text_dim and not encoder_path:
        ap.error("a caption was given but the export names no text encoder; pass --text-encoder")
    if encoder_path and not Path(encoder_path).is_dir():
        ap.error(f"text encoder {encoder_path}: no such directory (pass --text-encoder)")
    encoder = None
    if any(it.caption for it in items):
        try:
            encoder = text_encoder_for(encoder_path, model.cfg, device)
        except ValueError as exc:
            ap.error(str(exc).splitlines()[0])
    spec = with_chunk_and_window(sampling, _clip_len(info))
    fps = recorded.get("fps") or args.fps
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, (item, prompt_frames) in enumerate(zip(items, frames, strict=True)):
        text = text_mask = None
        if item.caption and encoder is not None:
            text, text_mask = embed_caption(encoder, item.caption)
        if len(prompt_frames):
            prompt = torch.from_numpy(codec.encode(prompt_frames))[None].to(device)  # (1, P, C, h, w)
        else:  # text to video: a 0-frame prompt of the codec's latent shape
            shape = codec.encode(np.zeros((1, *prompt_frames.shape[1:]), dtype=np.uint8)).shape[1:]
            prompt = torch.zeros((1, 0, *shape), device=device)

        def progress(done: int, total: int, i: int = i) -> None:
            print(f"  video {i + 1}/{len(items)}: {done}/{total} frames", file=sys.stderr, flush=True)

        decoding = Decoding(codec, 1)
        generate_as(
            spec, model, diffusion, prompt, args.frames, text=None if text is None else text.to(device),
            text_mask=None if text_mask is None else text_mask.to(device),
            generator=torch.Generator(device).manual_seed(args.seed + i), progress=progress,
            autocast=sampling_autocast(spec.precision, device), on_chunk=decoding,
        )  # (1, P + N, C, h, w), decoded as it was generated
        pixels = _even(decoding.video(0))  # (T, H, W, 3) uint8
        write_video(out / f"sample_{i:03d}.mp4", pixels, fps)
        write_gif(out / f"sample_{i:03d}.gif", pixels, fps)
        source = f"{prompt_frames.shape[0]} from {item.path}" if item.path else "text to video"
        print(f"{out / f'sample_{i:03d}.mp4'} (+ .gif): {pixels.shape[0]} frames ({source}"
              + (f", caption {item.caption!r})" if item.caption else ")"))
    return 0


class Decoding:
    """Decodes each video of a generation chunk by chunk as the sampler finishes it (`generate`'s
    on_chunk), one StreamDecoder per video, so that the VAE only ever holds one chunk's activations."""

    def __init__(self, codec: Codec, count: int) -> None:
        self.streams = [codec.stream_decoder() for _ in range(count)]
        self.frames: list[list[np.ndarray]] = [[] for _ in range(count)]

    def __call__(self, chunk: torch.Tensor) -> None:
        """chunk: (B, n, C, h, w) latents, the next n frames of every video."""
        for i, stream in enumerate(self.streams):
            self.frames[i].append(stream.push(chunk[i].float().cpu().numpy()))  # (m, H, W, 3) uint8

    def video(self, i: int) -> np.ndarray:
        """uint8 (T, H, W, 3): video i decoded so far."""
        return np.concatenate(self.frames[i])


def _even(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) zero-padded at the bottom and right to even H and W (yuv420p needs them)."""
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)))
    return frames


if __name__ == "__main__":
    raise SystemExit(main())
