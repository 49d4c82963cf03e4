"""The latent loader's throughput beside a raw sequential read of the same shards.

    vidgpt-bench loader            # prints one JSON object

Writes a dataset of random latent clips (float16, like the encoder's), then measures in one run:
the raw sequential read speed of the shard files (`raw_mb_s`), the loader over the local shards
(`local_samples_s`, `local_mb_s`, `read_ratio` = local / raw, with --workers DataLoader workers;
`local_mb_s_by_workers` for 0, 1 and 2) and, when `moto_server` is installed,
the loader over the same shards on an S3 server on loopback (`s3_mb_s`, `s3_vs_local`). MB/s count
the shard bytes of the samples delivered. Files are read once before timing, so both sides read
from the page cache. Goal: read_ratio >= 0.5.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline import storage
from data_pipeline.index import write_index
from data_pipeline.loader import LatentLoader, LoaderConfig
from data_pipeline.s3_server import S3ServerError, start_moto_server
from data_pipeline.shards import Sample, ShardBuilder


def write_dataset(root: Path, shards: int, per_shard: int, frames: int, latent: tuple[int, int, int]) -> int:
    rng = np.random.default_rng(0)
    infos = []
    for s in range(shards):
        name = f"shards/bench-{s:04d}.tar"
        builder = ShardBuilder(root / name, name)
        for i in range(per_shard):
            lat = rng.standard_normal((frames, *latent), dtype=np.float32).astype(np.float16)
            builder.add(Sample(f"b{s}-{i}", lat, {"source": "bench"}))
        infos.append(builder.close().to_json())
    write_index(str(root), infos, {"codec": {"name": "identity"}, "size": list(latent[1:])})
    return sum(i["bytes"] for i in infos)


def raw_read(files: list[Path]) -> tuple[float, int]:
    start, n = time.perf_counter(), 0
    for f in files:
        with open(f, "rb") as fh:
            while block := fh.read(8 << 20):
                n += len(block)
    return time.perf_counter() - start, n


def time_loader(cfg: LoaderConfig) -> tuple[float, int, int]:
    """Seconds, samples and shard bytes of one epoch."""
    loader = LatentLoader(cfg)
    sample_bytes = int(np.mean(np.concatenate([np.diff(o) for o in loader.table.offsets])))
    start, samples = time.perf_counter(), 0
    for batch in loader:
        samples += batch["latents"].shape[0]
    return time.perf_counter() - start, samples, samples * sample_bytes


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="vidgpt-bench-loader-"))
    try:
        root = work / "ds"
        latent = (args.channels, args.latent_size, args.latent_size)
        total = write_dataset(root, args.shards, args.samples_per_shard, args.frames, latent)
        files = sorted((root / "shards").glob("*.tar"))
        raw_read(files)  # warm the page cache
        raw_s, raw_bytes = min(raw_read(files) for _ in range(args.repeats))
        def local(workers: int) -> tuple[float, int, int]:
            cfg = LoaderConfig(str(root), num_frames=args.frames, batch_size=args.batch_size,
                               num_workers=workers, shuffle_buffer=args.shuffle_buffer, crop="whole")
            time_loader(cfg)  # warm-up
            return min(time_loader(cfg) for _ in range(args.repeats))

        by_workers = {w: local(w) for w in sorted({0, 1, 2, args.workers})}
        local_s, samples, sample_bytes = by_workers[args.workers]
        out: dict[str, Any] = {
            "benchmark": "loader",
            "shards": args.shards, "samples": args.shards * args.samples_per_shard,
            "sample_shape": [args.frames, *latent], "dataset_mb": round(total / 2**20, 1),
            "batch_size": args.batch_size, "workers": args.workers, "shuffle_buffer": args.shuffle_buffer,
            "raw_mb_s": round(raw_bytes / raw_s / 2**20, 1),
            "local_samples_s": round(samples / local_s, 1),
            "local_mb_s": round(sample_bytes / local_s / 2**20, 1),
        }
        out["read_ratio"] = round(out["local_mb_s"] / out["raw_mb_s"], 3)
        out["local_mb_s_by_workers"] = {str(w): round(b / t / 2**20, 1) for w, (t, _, b) in by_workers.items()}
        moto = None
        if args.s3:
            try:
                moto = start_moto_server()
            except S3ServerError:
                moto = None  # no S3 figures without moto_server
        if moto is not None:
            proc, url = moto
            env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                   "AWS_DEFAULT_REGION": "us-east-1"}
            old = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                storage.s3_client().create_bucket(Bucket="bench")
                for f in [*files, root / "index.json"]:
                    storage.upload_file(f, "s3://bench/ds/" + str(f.relative_to(root)))
                s3_cfg = LoaderConfig("s3://bench/ds", num_frames=args.frames, batch_size=args.batch_size,
                                      num_workers=args.workers, shuffle_buffer=args.shuffle_buffer, crop="whole")
                s3_s, s3_samples, s3_bytes = time_loader(s3_cfg)
                out["s3_samples_s"] = round(s3_samples / s3_s, 1)
                out["s3_mb_s"] = round(s3_bytes / s3_s / 2**20, 1)
                out["s3_vs_local"] = round(out["s3_mb_s"] / out["local_mb_s"], 3)
            finally:
                proc.terminate()
                proc.wait()
                for k, v in old.items():
                    os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        out["goal_read_ratio"] = out["read_ratio"] >= 0.5
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vidgpt-bench loader", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=16, help="shards (default: 16)")
    ap.add_argument("--samples-per-shard", type=int, default=64, help="clips per shard (default: 64)")
    ap.add_argument("--frames", type=int, default=33, help="frames per clip (default: 33)")
    ap.add_argument("--channels", type=int, default=4, help="latent channels (default: 4)")
    ap.add_argument("--latent-size", type=int, default=32, help="latent height = width (default: 32)")
    ap.add_argument("--batch-size", type=int, default=8, help="clips per batch (default: 8)")
    ap.add_argument("--workers", type=int, default=0,
                    help="DataLoader workers of the headline figures (default: 0, the loader's default: reads in "
                         "the training process with a read-ahead thread; 0, 1 and 2 are always measured)")
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs per setting; the fastest counts (default: 3)")
    ap.add_argument("--shuffle-buffer", type=int, default=64, help="shuffle block (default: 64)")
    ap.add_argument("--no-s3", dest="s3", action="store_false", help="skip the S3 (moto) measurement")
    json.dump(run(ap.parse_args(argv)), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
