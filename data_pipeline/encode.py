"""vidgpt-encode: turn raw videos into VAE-latent WebDataset shards, once, offline.

    vidgpt-encode videos/ s3://bucket/latents --codec sd-vae --vae stabilityai/sd-vae-ft-ema \\
        --size 256 --fps 8 --min-frames 17 --max-frames 257
    vidgpt-encode merge-index s3://bucket/latents

Decoding (PyAV: fps resampling, short-side resize, centre crop, clip splitting) runs in a pool of
processes ahead of the codec, so the codec (the GPU) never waits on decoding. Finished shards are
published atomically (uploaded in the background for S3), then committed by a small record; a re-run
after a crash or kill skips committed inputs and redoes only the unit that was in progress, so every
input is encoded exactly once. Unusable videos go to failures.jsonl and the run continues. With
`--num-workers-total N --worker-index W` (defaults from SLURM_ARRAY_TASK_COUNT/ID) N independent
workers split the input list; when the last one finishes, the index is merged (or run `merge-index`).
Exit status: 0 done; 1 a shard could not be written or uploaded (re-run to retry); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import io
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline import storage
from data_pipeline.cli_types import finite_float
from data_pipeline.codec_names import CODEC_NAMES, VAE_CODECS
from data_pipeline.index import (
    PROGRESS,
    SHARDS,
    DatasetIndexError,
    InputRecord,
    UnitRecord,
    check_job,
    done_name,
    merge_index,
    read_units,
    shard_name,
    unit_record_name,
    worker_tag,
    write_json,
)
from data_pipeline.inputs import InputError, InputItem, inputs_digest, list_inputs, worker_share
from data_pipeline.lock import LockHeld, WorkerLock
from data_pipeline.shards import Sample, ShardBuilder
from data_pipeline.synthetic import SYNTHETIC_JSON
from data_pipeline.video import Clip, DecodeOptions, VideoError, decode_clips, parse_buckets

MAX_PENDING_UPLOADS = 2
"""Finished shards waiting for their S3 upload before encoding pauses."""


@dataclass
class EncodeConfig:
    input: str
    output: str
    codec: str = "identity"
    vae: str | None = None
    height: int = 64
    width: int = 64
    buckets: tuple[tuple[int, int], ...] = ()
    """(H, W) sizes each video is resized and cropped to the nearest of by aspect ratio; () = height x width."""
    fps: float | None = None
    frame_stride: int = 1
    min_frames: int = 8
    max_frames: int = 256
    shard_samples: int = 256
    shard_bytes: int = 1 << 30
    num_workers_total: int = 1
    worker_index: int = 0
    decode_workers: int = 2
    prefetch: int = 4
    text_encoder: str | None = None
    device: str | None = None
    batch_size: int = 8
    text_batch_size: int = 32
    progress: bool = True
    merge: bool = True
    max_upload_failures: int = 3
    """Stop encoding after this many shards in a row could not be published (S3 gone, disk full)."""
    break_lock: bool = False
    """Take over this worker's lock even if its holder looks alive."""


@dataclass
class Summary:
    worker: int
    total: int
    inputs: int = 0  # this worker's share
    skipped: int = 0  # already committed by an earlier run
    encoded: int = 0  # inputs processed by this run (decoded, and encoded unless unusable)
    ok: int = 0  # usable inputs whose shard and commit record were written
    failed: int = 0  # unusable inputs (in failures.jsonl after the merge), committed
    not_written: int = 0  # processed inputs whose shard or record could not be written: a re-run redoes them
    clips: int = 0
    frames: int = 0  # video frames encoded (a video VAE turns 1 + 4k of them into 1 + k latent frames)
    bytes: int = 0
    shards: int = 0
    publish_errors: list[str] = field(default_factory=list)
    stopped: str | None = None  # why encoding stopped before the end, if it did
    wall_s: float = 0.0
    codec_s: float = 0.0
    text_s: float = 0.0
    merged: bool = False

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["codec_busy_fraction"] = self.codec_s / self.wall_s if self.wall_s else 0.0
        return d


def decode_input(item: InputItem, opts: DecodeOptions) -> tuple[list[Clip] | None, str | None]:
    """Runs in a decode process: the clips of one input, or the reason it cannot be used."""
    try:
        source: Any = item.source
        if storage.is_s3(source):
            source = io.BytesIO(storage.read_bytes(source))
        return decode_clips(source, dataclasses.replace(opts, start=item.start, end=item.end)), None
    except VideoError as exc:
        return None, str(exc)
    except storage.MissingError as exc:
        return None, f"missing: {exc}"


class Progress:
    """videos/s and frames/s on stderr: a live line on a terminal, a line every 10 s otherwise."""

    def __init__(self, enabled: bool, total: int, tag: str) -> None:
        self.enabled, self.total, self.tag = enabled, total, tag
        self.tty = sys.stderr.isatty()
        self.start = self.last = time.monotonic()

    def update(self, s: Summary, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < (0.5 if self.tty else 10.0)):
            return
        self.last = now
        dt = max(now - self.start, 1e-9)
        done = s.encoded
        line = (
            f"[{self.tag}] {done}/{self.total} videos | {done / dt:.2f} videos/s | {s.frames / dt:.1f} frames/s"
            f" | committed ok {s.ok} failed {s.failed} | {s.clips} clips in {s.shards} shards"
            + (f" | NOT WRITTEN {s.not_written}" if s.not_written else "")
        )
        sys.stderr.write(("\r" + line + ("\n" if final else "")) if self.tty else line + "\n")
        sys.stderr.flush()


class Encoder:
    """One worker's encoding job."""

    def __init__(self, cfg: EncodeConfig) -> None:
        # codecs and text import torch: deferred so that the spawned decode workers, which import this module,
        # start without it (about 1 s and 200 MB each)
        from data_pipeline.codecs import build_codec  # noqa: PLC0415

        self.cfg = cfg
        self.root = cfg.output.rstrip("/") if storage.is_s3(cfg.output) else os.path.abspath(cfg.output)
        self.items = list_inputs(cfg.input)
        self.share = worker_share(self.items, cfg.worker_index, cfg.num_workers_total)
        self.codec = build_codec(cfg.codec, vae=cfg.vae, device=cfg.device, batch_size=cfg.batch_size)
        # a video VAE takes clips of 1 + f*k frames: clips are split at that length and the last one cut to it
        low, high = self.codec.on_grid(cfg.min_frames - 1) + self.codec.temporal_factor, self.codec.on_grid(cfg.max_frames)
        low = 1 if cfg.min_frames <= 1 else low
        if low > high:
            raise InputError(f"--min-frames {cfg.min_frames} / --max-frames {cfg.max_frames}: no clip length between "
                             f"them that the {self.codec.name} codec takes ({self.codec.grid_text()})")
        d = self.codec.downsample
        for h, w in cfg.buckets or ((cfg.height, cfg.width),):
            if h % d or w % d:
                raise InputError(f"size {h}x{w}: the {self.codec.name} codec needs sizes divisible by {d}")
        self.opts = DecodeOptions(
            height=cfg.height, width=cfg.width, fps=cfg.fps, frame_stride=cfg.frame_stride,
            min_frames=low, max_frames=high, buckets=cfg.buckets,
        )
        self.text = None
        if cfg.text_encoder:
            from data_pipeline.text import TextEncoder  # noqa: PLC0415 - see build_codec above

            self.text = TextEncoder(cfg.text_encoder, device=cfg.device, batch_size=cfg.text_batch_size)
        self._embedded: dict[str, np.ndarray] = {}  # input id -> caption embedding, encoded ahead in batches
        self._to_embed: list[InputItem] = []
        self.tag = worker_tag(cfg.worker_index, cfg.num_workers_total)
        local = not storage.is_s3(self.root)
        self.staging = (
            os.path.join(self.root, SHARDS, f".staging-{self.tag}") if local else tempfile.mkdtemp(prefix="vidgpt-enc-")
        )
        self.uploader = ThreadPoolExecutor(max_workers=1) if not local else None

    def job(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "codec": self.codec.describe(), "size": [cfg.height, cfg.width], "fps": cfg.fps,
            **({"buckets": [list(b) for b in cfg.buckets]} if cfg.buckets else {}),
            "frame_stride": cfg.frame_stride, "min_frames": cfg.min_frames, "max_frames": cfg.max_frames,
            "num_workers_total": cfg.num_workers_total, "num_inputs": len(self.items),
            "inputs_sha256": inputs_digest(self.items),
            "text_encoder": None if self.text is None else {"path": self.cfg.text_encoder, "dim": self.text.dim},
            **({"synthetic": record} if (record := self._synthetic_record()) else {}),
        }

    def _synthetic_record(self) -> dict[str, Any] | None:
        """The input directory's synthetic.json (vidgpt-make-synthetic's task), recorded in index.json so
        that evaluation renders the truth as the videos were drawn; None for other inputs."""
        uri = storage.join(self.cfg.input, SYNTHETIC_JSON)
        if self.cfg.input.endswith((".jsonl", ".json", ".csv")) or not storage.exists(uri):
            return None
        try:
            record = json.loads(storage.read_bytes(uri))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{uri}: not the JSON vidgpt-make-synthetic writes ({exc})") from exc
        return record if isinstance(record, dict) else None

    def _clean_uncommitted(self, next_seq: int) -> None:
        """Remove shards of this worker that were published but never committed (a crash in between)."""
        if not storage.is_s3(self.root):
            shutil.rmtree(self.staging, ignore_errors=True)  # a killed run's unfinished shard
        for uri in storage.list_files(storage.join(self.root, SHARDS)):
            name = uri.rsplit("/", 1)[-1]
            if name.startswith(self.tag + "-") and name.endswith(".tar"):
                if int(name[len(self.tag) + 1 : -4]) >= next_seq:
                    storage.delete(uri)

    def _caption_embedding(self, item: InputItem) -> np.ndarray | None:
        """The item's caption embedding. Captions are known before their videos are decoded, so T5 runs
        on the next `text_batch_size` pending captions at once (not once per video)."""
        if self.text is None or not item.caption:
            return None
        if item.id not in self._embedded:
            while self._to_embed and self._to_embed[0].id != item.id:  # an item without a caption, or failed
                self._to_embed.pop(0)
            batch = self._to_embed[: self.cfg.text_batch_size] or [item]
            del self._to_embed[: len(batch)]
            start = time.perf_counter()
            for it, emb in zip(batch, self.text.encode([it.caption for it in batch]), strict=True):
                self._embedded[it.id] = emb
            self.summary.text_s += time.perf_counter() - start
        return self._embedded.pop(item.id)

    def samples(self, item: InputItem, clips: list[Clip]) -> Iterator[Sample]:
        text = self._caption_embedding(item)
        describe = self.codec.describe()
        for i, clip in enumerate(clips):
            kept = self.codec.on_grid(len(clip.frames))  # the last clip of a video, cut to the codec's grid
            clip = dataclasses.replace(clip, frames=clip.frames[:kept], frame_indices=clip.frame_indices[:kept])
            start = time.perf_counter()
            latents = self.codec.encode(clip.frames)  # (T', C, h, w), scaled; T' = T unless the codec compresses time
            self.summary.codec_s += time.perf_counter() - start
            meta = {
                "source": item.name, "input_id": item.id, "clip": i, "frame_indices": clip.frame_indices,
                "fps": clip.fps, "start_time": clip.start_time, "caption": item.caption,
                "codec": describe["name"], "scale_factor": describe["scale_factor"],
                "size": list(clip.frames.shape[1:3]),
            }
            yield Sample(key=f"{item.id}-{i:04d}", latents=latents, meta=meta, caption=item.caption, text=text)

    def _commit(self, unit: UnitRecord, local_path: str | None) -> None:
        """Publish a finished unit and count it as written or not (runs on the uploader thread for S3)."""
        s = self.summary
        try:
            self._publish(unit, local_path)
        except storage.StorageError as exc:
            s.publish_errors.append(str(exc))
            s.not_written += len(unit.inputs)
            self._failed_in_a_row += 1
            if local_path is not None:
                Path(local_path).unlink(missing_ok=True)
            return
        s.ok += sum(r.status == "ok" for r in unit.inputs)
        s.failed += sum(r.status == "failed" for r in unit.inputs)
        self._failed_in_a_row = 0

    def _publish(self, unit: UnitRecord, local_path: str | None) -> None:
        """Make the unit's shard visible, then commit the unit."""
        if unit.shard is not None and local_path is not None:
            target = storage.join(self.root, unit.shard.path)
            if storage.is_s3(self.root):
                storage.upload_file(local_path, target)
                os.unlink(local_path)
            else:
                os.replace(local_path, target)
        write_json(storage.join(self.root, unit_record_name(unit.worker, unit.total, unit.seq)), unit.to_json())

    def run(self) -> Summary:
        cfg = self.cfg
        total, worker = cfg.num_workers_total, cfg.worker_index
        self.summary = s = Summary(worker=worker, total=total, inputs=len(self.share))
        self._failed_in_a_row = 0
        t0 = time.monotonic()
        # one writer per worker output: a second encoder with the same --worker-index is refused here,
        # before it removes or writes anything
        with WorkerLock(storage.join(self.root, PROGRESS, f"{self.tag}.lock"), break_lock=cfg.break_lock) as lock:
            self._run_locked(s, lock)
        s.wall_s = time.monotonic() - t0
        return s

    def _run_locked(self, s: Summary, lock: WorkerLock) -> None:
        cfg = self.cfg
        total, worker = cfg.num_workers_total, cfg.worker_index
        check_job(self.root, self.job())
        units = read_units(self.root, worker, total)
        done_ids = {rec.id for u in units for rec in u.inputs}
        next_seq = max((u.seq for u in units), default=-1) + 1
        self._clean_uncommitted(next_seq)
        os.makedirs(self.staging, exist_ok=True)
        pending = [it for it in self.share if it.id not in done_ids]
        self._to_embed = [it for it in pending if it.caption]
        s.skipped = len(self.share) - len(pending)
        progress = Progress(cfg.progress, len(pending), self.tag)
        futures: list[Future[None]] = []

        def finish(unit: UnitRecord, builder: ShardBuilder) -> None:
            local_path: str | None = str(builder.local_path)
            if builder.samples:
                unit.shard = builder.close()
                s.shards += 1
                s.bytes += unit.shard.bytes
            else:
                builder.abort()
                local_path = None
            if self.uploader is not None:
                futures.append(self.uploader.submit(self._commit, unit, local_path))
                # back-pressure: encoding waits while more than MAX_PENDING_UPLOADS shards are queued, so
                # slow or failing uploads neither fill the staging disk nor go unnoticed for long
                while sum(not f.done() for f in futures) > MAX_PENDING_UPLOADS:
                    next(f for f in futures if not f.done()).result()
            else:
                self._commit(unit, local_path)

        def new_unit(seq: int) -> tuple[UnitRecord, ShardBuilder]:
            name = shard_name(worker, total, seq)
            local = os.path.join(self.staging, os.path.basename(name) + ".partial")
            return UnitRecord(worker, total, seq, None), ShardBuilder(local, name)

        ctx = mp.get_context("spawn")
        pool = ctx.Pool(cfg.decode_workers) if cfg.decode_workers > 0 and pending else None
        unit, builder = new_unit(next_seq)
        try:
            window: deque[tuple[InputItem, Any]] = deque()
            todo = iter(pending)

            def submit() -> None:
                item = next(todo, None)
                if item is not None:
                    window.append((item, pool.apply_async(decode_input, (item, self.opts)) if pool else None))

            for _ in range(max(1, cfg.prefetch)):
                submit()
            while window:
                item, job = window.popleft()
                submit()
                clips, reason = job.get() if job is not None else decode_input(item, self.opts)
                s.encoded += 1
                if clips is None:
                    unit.inputs.append(InputRecord(item.id, item.name, "failed", reason))
                else:
                    n = 0  # latent frames (as the index counts them)
                    for sample in self.samples(item, clips):
                        builder.add(sample)
                        n += sample.latents.shape[0]
                        s.frames += self.codec.pixel_frames(sample.latents.shape[0])  # video frames
                    unit.inputs.append(InputRecord(item.id, item.name, "ok", None, len(clips), n))
                    s.clips += len(clips)
                progress.update(s)
                if builder.samples >= cfg.shard_samples or builder.nbytes >= cfg.shard_bytes:
                    finish(unit, builder)
                    unit, builder = new_unit(unit.seq + 1)
                if self._failed_in_a_row >= cfg.max_upload_failures:
                    s.stopped = (f"stopped encoding after {self._failed_in_a_row} shards in a row could not be written "
                                 f"(last: {s.publish_errors[-1]}); fix the cause and re-run to continue")
                    break
                if lock.lost:
                    s.stopped = f"{lock.lost}; stopped encoding so that two writers do not mix their output"
                    break
            if unit.inputs and s.stopped is None:
                finish(unit, builder)
            else:
                builder.abort()  # its inputs are not committed: the next run redoes them
        except BaseException:
            builder.abort()
            raise
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
            if self.uploader is not None:
                for fut in futures:
                    exc = fut.exception()
                    if exc is not None:
                        s.publish_errors.append(str(exc))
                self.uploader.shutdown()
            shutil.rmtree(self.staging, ignore_errors=True)

        if not s.publish_errors and s.stopped is None:
            self._write_done()
            if cfg.merge:
                s.merged = self._merge_if_complete()
        progress.update(s, final=True)

    def _write_done(self) -> None:
        cfg = self.cfg
        units = read_units(self.root, cfg.worker_index, cfg.num_workers_total)
        committed = {rec.id for u in units for rec in u.inputs}
        missing = [it.name for it in self.share if it.id not in committed]
        if missing:
            raise DatasetIndexError(f"{len(missing)} inputs of {self.tag} are not committed, e.g. {missing[0]}")
        write_json(
            storage.join(self.root, done_name(cfg.worker_index, cfg.num_workers_total)),
            {
                "worker": cfg.worker_index, "total": cfg.num_workers_total,
                "units": [u.seq for u in units],
                "shards": [u.shard.to_json() for u in units if u.shard is not None],
                "inputs": {
                    "ok": sum(r.status == "ok" for u in units for r in u.inputs),
                    "failed": sum(r.status == "failed" for u in units for r in u.inputs),
                },
            },
        )

    def _merge_if_complete(self) -> bool:
        total = self.cfg.num_workers_total
        if all(storage.exists(storage.join(self.root, done_name(w, total))) for w in range(total)):
            merge_index(self.root)
            return True
        return False


# ----------------------------------------------------------------------------- command line


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="vidgpt-encode", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("input", help="directory of videos (local or s3://, searched recursively) or a .jsonl/.csv manifest")
    ap.add_argument("output", help="dataset root: local directory or s3://bucket/prefix")
    ap.add_argument("--codec", choices=CODEC_NAMES, default="identity",
                    help="identity: pixels in [-1, 1] as latents (CPU demo, tests); sd-vae: an image VAE "
                         "(diffusers AutoencoderKL), frame by frame; wan-vae: a causal video VAE (diffusers "
                         "AutoencoderKLWan, e.g. the Wan 2.1 VAE): clips are cut to 1 + 4k frames, which become "
                         "1 + k latent frames")
    ap.add_argument("--vae", help="sd-vae / wan-vae: local directory or hub id of the VAE (e.g. "
                                  "stabilityai/sd-vae-ft-ema, or a directory holding the Wan 2.1 VAE in diffusers format)")
    ap.add_argument("--size", type=int, nargs="+", metavar=("H", "W"), default=[64],
                    help="output frame size: H (square) or H W; short side resized, then centre-cropped (default: 64)")
    ap.add_argument("--buckets", metavar="HxW,...",
                    help="aspect-ratio buckets instead of one --size, e.g. 256x256,192x320,320x192: each video goes to "
                         "the bucket nearest its aspect ratio and is resized and centre-cropped to it; training "
                         "batches are then each from one bucket")
    ap.add_argument("--fps", type=finite_float, help="resample to this frame rate (default: keep the source rate)")
    ap.add_argument("--frame-stride", type=int, default=1, help="then keep every k-th frame (default: 1)")
    ap.add_argument("--min-frames", type=int, default=8, help="drop clips shorter than this (default: 8)")
    ap.add_argument("--max-frames", type=int, default=256,
                    help="split videos into clips of at most this many frames (default: 256)")
    ap.add_argument("--shard-samples", type=int, default=256,
                    help="close a shard at the first video boundary with at least this many clips (default: 256)")
    ap.add_argument("--shard-mb", type=finite_float, default=1024, help="... or once it holds this many MiB (default: 1024)")
    ap.add_argument("--num-workers-total", type=int, default=_env_int("SLURM_ARRAY_TASK_COUNT", 1),
                    help="independent workers splitting the input list (default: $SLURM_ARRAY_TASK_COUNT or 1)")
    ap.add_argument("--worker-index", type=int, default=None,
                    help="this worker's index (default: $SLURM_ARRAY_TASK_ID minus $SLURM_ARRAY_TASK_MIN, or 0)")
    ap.add_argument("--decode-workers", type=int, default=min(4, os.cpu_count() or 1),
                    help="decoding processes running ahead of the codec; 0 decodes inline (default: min(4, CPUs))")
    ap.add_argument("--prefetch", type=int, default=None, help="videos decoded ahead (default: 2 x decode workers)")
    ap.add_argument("--text-encoder", help="local directory of a T5 encoder: store caption embeddings as KEY.text.npy")
    ap.add_argument("--device", help="codec/text-encoder device (default: cuda if available, else cpu)")
    ap.add_argument("--batch-size", type=int, default=8, help="frames per VAE batch (default: 8)")
    ap.add_argument("--text-batch-size", type=int, default=32,
                    help="captions per T5 batch, encoded ahead of their videos (default: 32)")
    ap.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    ap.add_argument("--no-merge", action="store_true", help="do not merge index.json when the last worker finishes")
    ap.add_argument("--max-upload-failures", type=int, default=3,
                    help="stop after this many shards in a row could not be written, e.g. S3 unreachable (default: 3)")
    ap.add_argument("--break-lock", action="store_true",
                    help="take over this worker's lock file (_progress/wW-ofN.lock) although its holder looks alive; "
                         "only when you know that encoder is dead (a lock unrefreshed for 5 minutes is taken over anyway)")
    return ap


def parse_config(argv: list[str]) -> EncodeConfig:
    ap = build_parser()
    a = ap.parse_args(argv)
    if len(a.size) > 2:
        ap.error(f"--size takes H or H W, got {len(a.size)} numbers")
    height, width = a.size[0], a.size[-1]
    buckets: tuple[tuple[int, int], ...] = ()
    if a.buckets is not None:
        if "--size" in argv or any(x.startswith("--size=") for x in argv):
            ap.error("--buckets replaces --size: give one of them")
        try:
            buckets = parse_buckets(a.buckets)
        except ValueError as exc:
            ap.error(f"--buckets {a.buckets}: {exc}")
        height, width = buckets[0]
    worker = a.worker_index
    if worker is None:
        worker = _env_int("SLURM_ARRAY_TASK_ID", 0) - _env_int("SLURM_ARRAY_TASK_MIN", 0)
    checks = {
        "--size": min(height, width) >= 1, "--frame-stride": a.frame_stride >= 1,
        "--min-frames": a.min_frames >= 1, "--max-frames": a.max_frames >= a.min_frames,
        "--shard-samples": a.shard_samples >= 1, "--shard-mb": a.shard_mb > 0,
        "--num-workers-total": a.num_workers_total >= 1, "--worker-index": 0 <= worker < a.num_workers_total,
        "--decode-workers": a.decode_workers >= 0, "--batch-size": a.batch_size >= 1,
        "--text-batch-size": a.text_batch_size >= 1, "--max-upload-failures": a.max_upload_failures >= 1,
        "--fps": a.fps is None or a.fps > 0,
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        ap.error(
            f"invalid {bad[0]} (size {a.size}, fps {a.fps}, min/max frames {a.min_frames}/{a.max_frames}, "
            f"worker {worker} of {a.num_workers_total})"
        )
    for name, location in (("INPUT", a.input), ("OUTPUT", a.output)):
        try:
            storage.check_location(location)
        except storage.LocationError as exc:
            ap.error(f"{name} {exc}")
    if not storage.is_s3(a.output) and os.path.exists(a.output) and not os.path.isdir(a.output):
        ap.error(f"OUTPUT {a.output}: exists and is not a directory")
    if a.codec in VAE_CODECS and not a.vae:
        ap.error(f"--codec {a.codec} needs --vae PATH_OR_ID")
    if a.codec not in VAE_CODECS and a.vae:
        ap.error(f"--vae is only used with --codec {'/'.join(VAE_CODECS)}, got --codec {a.codec}")
    return EncodeConfig(
        input=a.input, output=a.output, codec=a.codec, vae=a.vae, height=height, width=width, buckets=buckets, fps=a.fps,
        frame_stride=a.frame_stride, min_frames=a.min_frames, max_frames=a.max_frames,
        shard_samples=a.shard_samples, shard_bytes=int(a.shard_mb * 1024 * 1024),
        num_workers_total=a.num_workers_total, worker_index=worker, decode_workers=a.decode_workers,
        prefetch=a.prefetch if a.prefetch is not None else max(2, 2 * a.decode_workers),
        text_encoder=a.text_encoder, device=a.device, batch_size=a.batch_size, text_batch_size=a.text_batch_size,
        progress=not a.no_progress, merge=not a.no_merge, max_upload_failures=a.max_upload_failures,
        break_lock=a.break_lock,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg: EncodeConfig | None = None
    try:
        if argv[:1] == ["merge-index"]:
            ap = argparse.ArgumentParser(prog="vidgpt-encode merge-index",
                                         description="Merge every worker's partial index into index.json.")
            ap.add_argument("output", help="dataset root: local directory or s3://bucket/prefix")
            root = ap.parse_args(argv[1:]).output
            root = root.rstrip("/") if storage.is_s3(root) else os.path.abspath(root)
            index = merge_index(root)
            print(f"{storage.join(root, 'index.json')}: {index['num_samples']} samples in {index['num_shards']} "
                  f"shards; inputs ok {index['inputs']['ok']}, failed {index['inputs']['failed']}")
            return 0
        cfg = parse_config(argv)
        summary = Encoder(cfg).run()
    except (InputError, DatasetIndexError, storage.StorageError, LockHeld, ValueError) as exc:
        print(f"vidgpt-encode: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (InputError, ValueError)) else 1
    except OSError as exc:  # the local disk: staging shards, progress records
        what = "no space left on the device" if exc.errno == errno.ENOSPC else f"{exc.strerror or exc}"
        where = exc.filename or (cfg.output if cfg is not None else "the output")
        print(f"vidgpt-encode: error: {what} writing {where}; the shards written so far "
              "are kept: free space and re-run the same command to continue", file=sys.stderr)
        return 1
    out = summary.to_json()
    print(json.dumps(out))
    for err in summary.publish_errors:
        print(f"vidgpt-encode: error: shard not written: {err}", file=sys.stderr)
    if summary.not_written:
        print(f"vidgpt-encode: error: {summary.not_written} input(s) were encoded but not written; re-run the same "
              "command to redo them", file=sys.stderr)
    if summary.stopped:
        print(f"vidgpt-encode: error: {summary.stopped}", file=sys.stderr)
    if summary.failed:
        print(f"vidgpt-encode: {summary.failed} input(s) could not be used: see "
              f"{storage.join(cfg.output, 'failures.jsonl')} (after merge) or {storage.join(cfg.output, PROGRESS)}",
              file=sys.stderr)
    return 1 if summary.publish_errors or summary.stopped else 0


if __name__ == "__main__":
    raise SystemExit(main())
