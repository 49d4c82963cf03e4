"""The trainer's side: stream latent clips from shards, equal per rank, deterministic and resumable.

    loader = LatentLoader(LoaderConfig("s3://bucket/latents", num_frames=33, batch_size=4), rank, world)
    for batch in loader:            # one epoch; batch["latents"]: (B, T, C, H, W) float16
        ...
    state = loader.state_dict()     # save with the checkpoint; load_state_dict(state) resumes exactly

How samples are assigned. An epoch's global sequence is every sample of every shard, shards in a
seeded per-epoch order. It is cut into `world` equal contiguous parts (one per rank), each cut into
`num_workers` equal parts (one per DataLoader worker), every part a whole number of batches; the few
samples left over (fewer than world x workers x batch) sit out that epoch. So every rank yields the
same number of batches however uneven the shards are, and a distributed job never hangs at an
epoch's end. Each worker reads its part in blocks of `shuffle_buffer` samples, each fetched with
ranged reads (one per shard piece, an HTTP Range GET on S3) using the byte offsets in index.json,
and yields a block in a seeded random order: a shuffle buffer whose state is a pure function of the
position, which is what makes resume exact without re-reading consumed shards.

Resume. The state is (epoch, batches consumed by this rank, the layout). With the same layout every
worker skips straight to its next sample. With a different number of ranks or workers, the samples
not yet consumed in the epoch (the rest of every old worker's part) become the new global sequence
and are split again, so the epoch continues with each remaining sample seen once.

Every read is checked against index.json: the shard's size, and each sample's CRC-32 recorded by the
encoder. A corrupt sample (failed checksum, unparsable) or a truncated shard's samples are replaced by
the worker's previous good one (so counts stay equal across ranks), with a warning; when more than
`max_bad_fraction` of a worker's samples are bad the loader stops with an error naming the shard. A
read that fails for a network or storage reason is not bad data: it is retried with backoff and then
stops the loader with an error saying so; a shard that has disappeared stops it at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipeline import storage
from data_pipeline.index import INDEX, read_json
from data_pipeline.shards import Sample, ShardError, read_samples, scan_shard

log = logging.getLogger("vidgpt.data")

Segment = tuple[int, int]  # [start, end) positions in an epoch's global sequence


class DataError(RuntimeError):
    """The dataset cannot be read as asked."""


def error_line(exc: BaseException) -> str:
    """The one-line message of an error, also when a DataLoader worker raised it (torch re-raises it
    in the training process with the worker's whole traceback in the message)."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


@dataclass(frozen=True, kw_only=True)
class LoaderSettings:
    """How clips are cut, batched and read: the settings a run chooses (the trainer's `[data]` section
    is these plus the dataset's path)."""

    num_frames: int = 16
    """Frames per training clip (a random window of longer clips; shorter clips are padded and masked)."""
    batch_size: int = 2
    """Clips per batch on each rank."""
    crop: Literal["random", "whole"] = "random"
    """random: a random window of num_frames frames; whole: the clip from its first frame, up to num_frames."""
    shuffle_buffer: int = 256
    """Samples shuffled together (one block read at a time)."""
    num_workers: int = 0
    """DataLoader worker processes per rank; 0 reads in the training process, with `read_ahead` blocks
    fetched by a background thread (parsing is cheap; on few cores, worker processes cost more in
    inter-process copies than they save: see vidgpt-bench loader)."""
    read_ahead: int = 2
    """Blocks fetched ahead of the one being yielded, by a background I/O thread."""
    max_bad_fraction: float = 0.01
    """Stop with an error once more than this fraction of a worker's samples were corrupt (failed CRC-32,
    unparsable)."""
    read_retries: int = 4
    """A read that fails for a network or storage reason (not bad data) is retried this many times,
    with exponential backoff from `retry_backoff_s`, then the loader stops with an error saying so; it
    is never replaced by other samples. (boto3 retries each S3 request on its own as well.)"""
    retry_backoff_s: float = 2.0
    """Seconds before the first retry; doubled for each next one."""

    def problems(self) -> list[tuple[str, str]]:
        """(field, what is wrong) for every setting that cannot work."""
        out = [(k, f"must be >= 1, got {getattr(self, k)}") for k in ("num_frames", "batch_size", "shuffle_buffer")
               if getattr(self, k) < 1]
        out += [(k, f"must be >= 0, got {getattr(self, k)}") for k in ("num_workers", "read_ahead", "read_retries")
                if getattr(self, k) < 0]
        if self.crop not in ("random", "whole"):
            out.append(("crop", f"must be 'random' or 'whole', got {self.crop!r}"))
        if not 0 <= self.max_bad_fraction <= 1:
            out.append(("max_bad_fraction", f"must be in [0, 1], got {self.max_bad_fraction}"))
        if not self.retry_backoff_s >= 0:
            out.append(("retry_backoff_s", f"must be >= 0, got {self.retry_backoff_s}"))
        return out

    def settings(self) -> dict[str, object]:
        """These settings as keyword arguments (of LoaderConfig)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(LoaderSettings)}


@dataclass(frozen=True, kw_only=True)
class LoaderConfig(LoaderSettings):
    """A loader: its source and seed, and the settings of LoaderSettings (keywords)."""

    source: str = field(kw_only=False)
    """Dataset root (with index.json), an index.json location, or shards: a comma-separated list or a
    brace pattern such as 'data/shards/w00000-of00001-{000000..000009}.tar' (these are scanned once)."""
    seed: int = 0
    """Seed of shard order, shuffling and windows (the same on every rank)."""
    text: bool = True
    """Return caption embeddings when the samples have them."""
    pin_memory: bool = False
    """Turn each batch into tensors in page-locked memory on a background thread, one batch ahead, so
    the trainer's `.to(device, non_blocking=True)` copies overlap compute (GPU training; on a machine
    without CUDA the batches are prepared ahead the same way, unpinned)."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("LoaderConfig: " + "; ".join(f"{k} {why}" for k, why in problems))


# ----------------------------------------------------------------------------- the shard table


@dataclass(frozen=True)
class ShardTable:
    uris: list[str]
    offsets: list[list[int]]  # per shard: sample offsets, then the end of the last sample
    frames: list[list[int]]
    nbytes: list[int | None] | None = None  # per shard: its size in bytes, checked on every read (None: unknown)
    crc32: list[list[int]] | None = None  # per shard: each sample's CRC-32, checked on every read ([]: none)
    shapes: list[list[tuple[int, int]]] | None = None  # per shard: each sample's latent (H, W) ([]: not recorded)
    codec: dict[str, Any] | None = None  # the index's codec record (None: no index)

    @property
    def sizes(self) -> list[int]:
        return [len(f) for f in self.frames]

    def buckets(self) -> list[tuple[int, int]]:
        """The distinct latent (H, W) of the samples, sorted, when the index records more than one (a dataset
        encoded with --buckets); [] otherwise: every batch is then any samples."""
        found = sorted({hw for shard in self.shapes or [] for hw in shard})
        return found if len(found) > 1 and all(len(s) == n for s, n in zip(self.shapes or [], self.sizes)) else []

    def split(self, held_out: int) -> tuple[ShardTable, ShardTable]:
        """(the first shards, the last `held_out` shards): a training table and a held-out one."""
        if not 0 < held_out < len(self.uris):
            raise DataError(f"cannot hold out {held_out} of {len(self.uris)} shards (need 1 <= N < the shard count)")

        def part(sl: slice) -> ShardTable:
            return ShardTable(self.uris[sl], self.offsets[sl], self.frames[sl],
                              None if self.nbytes is None else self.nbytes[sl],
                              None if self.crc32 is None else self.crc32[sl],
                              None if self.shapes is None else self.shapes[sl], self.codec)

        cut = len(self.uris) - held_out
        return part(slice(0, cut)), part(slice(cut, None))

    def fingerprint(self) -> str:
        """A short digest of what the dataset holds (per shard: sample count, frames, bytes, CRCs), not
        where it lives: the same shards copied to S3 keep it, a different dataset of the same size does not."""
        content = [self.frames, self.nbytes or [], self.crc32 or []]
        return hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()[:16]


def expand_braces(pattern: str) -> list[str]:
    """'a-{000..003}.tar' -> ['a-000.tar', ..., 'a-003.tar'] (zero padding kept); several braces nest."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo) if lo.startswith("0") else 0
    out = []
    for n in range(int(lo), int(hi) + 1):
        out += expand_braces(pattern[: m.start()] + str(n).zfill(width) + pattern[m.end() :])
    return out


def index_location(source: str) -> str | None:
    """Where the index.json of a `LoaderConfig.source` is; None for shard lists and brace patterns."""
    if source.endswith(".tar") or "," in source or "{" in source:
        return None
    return source if source.endswith(".json") else storage.join(source, INDEX)


def load_table(source: str) -> ShardTable:
    index_uri = index_location(source)
    if index_uri is None:
        uris = [u for part in source.split(",") if part.strip() for u in expand_braces(part.strip())]
        offsets, frames = [], []
        log.warning("no index.json given: scanning %d shard(s) once to find their samples", len(uris))
        for uri in uris:
            o, f, _ = scan_shard(uri)
            offsets.append(o)
            frames.append(f)
        return ShardTable(uris, offsets, frames)
    root = index_uri.rsplit("/", 1)[0] if storage.is_s3(index_uri) else os.path.dirname(os.path.abspath(index_uri))
    try:
        index = read_json(index_uri)
    except storage.MissingError as exc:
        raise DataError(f"{index_uri}: no dataset index (encode with vidgpt-encode, or pass shard paths)") from exc
    shards = [s for s in index["shards"] if s["samples"] > 0]
    return ShardTable(
        uris=[storage.join(root, s["path"]) for s in shards],
        offsets=[s["offsets"] for s in shards],
        frames=[s["frames"] for s in shards],
        nbytes=[int(s["bytes"]) if "bytes" in s else None for s in shards],
        crc32=[[int(c) for c in s.get("crc32", [])] for s in shards],
        shapes=[[(int(h), int(w)) for h, w in s.get("sizes", [])] for s in shards],
        codec=index.get("codec"),
    )


# ----------------------------------------------------------------------------- the plan (pure functions)


def shard_order(num_shards: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x5A4D])).permutation(num_shards)


def split_equal(segments: list[Segment], parts: int, multiple: int) -> list[list[Segment]]:
    """Cut a sequence of segments into `parts` consecutive pieces of equal length, a multiple of
    `multiple`; the remainder at the end is left out."""
    total = sum(b - a for a, b in segments)
    each = (total // (parts * multiple)) * multiple
    out: list[list[Segment]] = []
    it = iter(segments)
    cur: Segment | None = next(it, None)
    for _ in range(parts):
        need, piece = each, []
        while need > 0 and cur is not None:
            a, b = cur
            take = min(need, b - a)
            piece.append((a, a + take))
            need -= take
            cur = (a + take, b) if a + take < b else next(it, None)
        out.append(piece)
    return out


def positions(segments: list[Segment]) -> np.ndarray:
    if not segments:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in segments])


def to_segments(pos: np.ndarray) -> list[Segment]:
    """Sorted-or-not positions -> maximal runs of consecutive values, in order."""
    out: list[Segment] = []
    for p in pos.tolist():
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0], p + 1)
        else:
            out.append((p, p + 1))
    return out


@dataclass(frozen=True)
class Layout:
    world: int
    workers: int  # readers per rank (DataLoader workers, or 1 in-process)
    batch_size: int

    def reader_segments(self, base: list[Segment], rank: int, worker: int) -> list[Segment]:
        per_rank = split_equal(base, self.world, self.batch_size * self.workers)[rank]
        return split_equal(per_rank, self.workers, self.batch_size)[worker]

    def batches_per_rank(self, base: list[Segment]) -> int:
        total = sum(b - a for a, b in base)
        return total // (self.world * self.workers * self.batch_size) * self.workers

    def consumed(self, rank_batches: int, worker: int) -> int:
        """Batches worker `worker` had produced once its rank consumed `rank_batches` (round robin)."""
        return max(0, (rank_batches - worker + self.workers - 1) // self.workers)


def bucketed_positions(shapes: list[tuple[int, int]], unit: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch sequence of a bucketed dataset: plain epoch positions (shards in the epoch's order, samples
    in order) reordered so that every `unit` consecutive ones share a latent size. Each size's positions,
    in order, are cut into units (a remainder under `unit` sits out this epoch), and the units of all
    sizes are put in a seeded order. shapes: the latent (H, W) of every plain position."""
    codes = {hw: i for i, hw in enumerate(sorted(set(shapes)))}
    code = np.array([codes[hw] for hw in shapes], dtype=np.int64)
    units: list[np.ndarray] = []
    for b in range(len(codes)):
        pos = np.flatnonzero(code == b)
        units += list(pos[: len(pos) // unit * unit].reshape(-1, unit))
    order = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0xB0C7])).permutation(len(units))
    return np.concatenate([units[i] for i in order]) if units else np.zeros(0, dtype=np.int64)


def block_size(shuffle_buffer: int, unit: int) -> int:
    """Positions shuffled together: the shuffle buffer, rounded up to whole units."""
    return -(-shuffle_buffer // unit) * unit


def reader_order(
    base: list[Segment], layout: Layout, rank: int, worker: int, *, seed: int, epoch: int, block: int, unit: int = 1,
) -> np.ndarray:
    """Epoch positions in the order one reader yields them: its part, block-shuffled. unit > 1 (a bucketed
    dataset, unit = the batch size): whole units of `unit` consecutive positions move together, so each
    batch is one unit (one bucket); a reader's part is always whole units."""
    pos = positions(layout.reader_segments(base, rank, worker))
    block = block_size(block, unit)
    out = []
    for b0 in range(0, len(pos), block):
        chunk = pos[b0 : b0 + block]
        rng = np.random.default_rng(
            np.random.SeedSequence([seed, epoch, rank, worker, b0, layout.world, layout.workers])
        )
        if unit == 1:
            out.append(chunk[rng.permutation(len(chunk))])
        else:
            groups = chunk.reshape(-1, unit)[rng.permutation(len(chunk) // unit)]  # (units, unit)
            out.append(np.concatenate([g[rng.permutation(unit)] for g in groups]))
    return np.concatenate(out) if out else pos


# ----------------------------------------------------------------------------- the dataset


def _identity(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


def _to_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


def _pin(batch: dict[str, Any]) -> dict[str, Any]:
    """Tensors of a batch, page-locked when CUDA is there to copy them."""
    out = _to_tensors(batch)
    if torch.cuda.is_available():
        out = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
    return out


def _pinned_ahead(batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Yield _pin(batch) for every batch, preparing the next one on a thread while the caller works."""
    it = iter(batches)

    def prepare() -> dict[str, Any] | None:
        batch = next(it, None)
        return None if batch is None else _pin(batch)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidgpt-pin") as pool:
        ahead = pool.submit(prepare)
        while (batch := ahead.result()) is not None:
            ahead = pool.submit(prepare)
            yield batch


class _EpochDataset(IterableDataset):
    """One rank's batches for one epoch, from a given position; runs inside DataLoader workers."""

    def __init__(
        self, cfg: LoaderConfig, table: ShardTable, epoch: int, base: list[Segment], layout: Layout,
        rank: int, start_batches: int, unit: int = 1,
    ) -> None:
        self.cfg, self.table, self.epoch, self.base = cfg, table, epoch, base
        self.layout, self.rank, self.start_batches, self.unit = layout, rank, start_batches, unit
        order = shard_order(len(table.uris), cfg.seed, epoch)
        self.shard_of_slot = order
        sizes = np.array(table.sizes, dtype=np.int64)[order]
        self.slot_start = np.concatenate([[0], np.cumsum(sizes)])  # plain position of each slot's first sample
        self.plain: np.ndarray | None = None  # bucketed: epoch position -> plain position
        self.shape_of_plain: list[tuple[int, int]] = []
        if unit > 1:
            self.shape_of_plain = [hw for shard in order.tolist() for hw in (table.shapes or [])[shard]]
            self.plain = bucketed_positions(self.shape_of_plain, unit, cfg.seed, epoch)

    def locate(self, pos: int) -> tuple[int, int]:
        """Epoch position -> (shard index, sample index within the shard)."""
        if self.plain is not None:
            pos = int(self.plain[pos])
        slot = int(np.searchsorted(self.slot_start, pos, side="right") - 1)
        return int(self.shard_of_slot[slot]), pos - int(self.slot_start[slot])

    def bucket(self, pos: int) -> tuple[int, int] | None:
        """The latent (H, W) the index records for an epoch position (a bucketed dataset), else None."""
        return None if self.plain is None else self.shape_of_plain[int(self.plain[pos])]

    def _read(self, pos_block: np.ndarray) -> dict[int, Sample | ShardError]:
        """Fetch the samples at some positions: one ranged read per run of neighbours in a shard."""
        located = sorted((self.locate(int(p)), int(p)) for p in pos_block)
        out: dict[int, Sample | ShardError] = {}
        i = 0
        while i < len(located):
            (shard, first), _ = located[i]
            j = i
            while j + 1 < len(located) and located[j + 1][0] == (shard, located[j][0][1] + 1):
                j += 1
            last = located[j][0][1]
            got = self._read_checked(shard, first, last + 1)
            for k in range(i, j + 1):
                out[located[k][1]] = got[k - i]
            i = j + 1
        return out

    def _read_checked(self, shard: int, start: int, stop: int) -> list[Sample | ShardError]:
        """Samples [start, stop) of a shard, checked against the index's size and CRCs; a network or
        storage failure is retried with backoff, then stops the loader (DataError saying so)."""
        table, cfg = self.table, self.cfg
        uri = table.uris[shard]
        size = table.nbytes[shard] if table.nbytes else None
        crc = table.crc32[shard] if table.crc32 else None
        for attempt in range(cfg.read_retries + 1):
            try:
                return read_samples(uri, table.offsets[shard], start, stop, size=size, crc32=crc)
            except storage.MissingError as exc:
                raise DataError(f"{exc}: a shard listed in the dataset index is gone (deleted or moved while "
                                "training?); restore it or re-encode the dataset") from exc
            except storage.StorageError as exc:
                if attempt == cfg.read_retries:
                    raise DataError(f"reading failed {attempt + 1} times, giving up (a network or storage failure, "
                                    f"not bad data): {exc}") from exc
                wait = cfg.retry_backoff_s * 2**attempt
                log.warning("read failed (attempt %d of %d), retrying in %.1f s: %s", attempt + 1,
                            cfg.read_retries + 1, wait, exc)
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _item(self, sample: Sample, pos: int) -> dict[str, Any]:
        cfg = self.cfg
        lat = sample.latents  # (T, C, H, W) float16
        T = lat.shape[0]
        n = cfg.num_frames
        start = 0
        if cfg.crop == "random" and T > n:
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, self.epoch, pos, 0xC0]))
            start = int(rng.integers(0, T - n + 1))
        window = lat[start : start + n]
        valid = np.zeros(n, dtype=bool)
        valid[: window.shape[0]] = True
        if window.shape[0] < n:
            window = np.concatenate([window, np.zeros((n - window.shape[0], *lat.shape[1:]), lat.dtype)])
        return {"latents": window, "valid": valid, "key": sample.key, "position": pos,
                "caption": sample.caption, "text": sample.text if cfg.text else None, "start": start}

    def _collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack samples into a batch of numpy arrays; the training process turns them into tensors.
        (Pickled through the worker's pipe this measured faster than torch's shared-memory tensors,
        which cost a file, an mmap and a descriptor pass each, on 2 cores.)"""
        shapes = {it["latents"].shape for it in items}
        if len(shapes) > 1:
            raise DataError(f"samples of one dataset have different latent shapes {sorted(shapes)}")
        latents = np.stack([it["latents"] for it in items])  # (B, T, C, H, W) float16
        batch: dict[str, Any] = {
            "latents": latents,
            "valid": np.stack([it["valid"] for it in items]),  # (B, T)
            "keys": [it["key"] for it in items],
            "positions": np.array([it["position"] for it in items], dtype=np.int64),
            "frame_start": np.array([it["start"] for it in items], dtype=np.int64),
            "captions": [it["caption"] for it in items],
        }
        texts = [it["text"] for it in items]
        if any(t is not None for t in texts):
            dim = next(t for t in texts if t is not None).shape[1]
            length = max(t.shape[0] for t in texts if t is not None)
            text = np.zeros((len(items), length, dim), dtype=np.float16)  # (B, L, D)
            mask = np.zeros((len(items), length), dtype=bool)
            for i, t in enumerate(texts):
                if t is not None:
                    text[i, : t.shape[0]] = t
                    mask[i, : t.shape[0]] = True
            batch["text"] = text
            batch["text_mask"] = mask  # (B, L); an all-False row: no caption
        return batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        cfg, layout = self.cfg, self.layout
        # the DataLoader polls its workers round robin from worker 0; rotate the roles so that a resumed
        # epoch continues with the reader whose batch comes next
        worker = 0 if info is None else (info.id + self.start_batches) % layout.workers
        order = reader_order(
            self.base, layout, self.rank, worker, seed=cfg.seed, epoch=self.epoch, block=cfg.shuffle_buffer,
            unit=self.unit,
        )
        skip = layout.consumed(self.start_batches, worker) * cfg.batch_size
        planned, bad = len(order), 0
        last_good: dict[tuple[int, int] | None, Sample] = {}  # per bucket (None: not bucketed)
        pending: list[dict[str, Any]] = []
        # one block (the shuffle buffer) at a time, read ahead by a thread; a resume starts at the first
        # unconsumed sample
        size = block_size(cfg.shuffle_buffer, self.unit)
        starts = [skip, *range((skip // size + 1) * size, planned, size)] if skip < planned else []
        blocks = iter([order[a : (a // size + 1) * size] for a in starts])
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidgpt-read") as io_thread:
            ahead: deque[tuple[np.ndarray, Future[dict[int, Sample | ShardError]]]] = deque()

            def fetch_next() -> None:
                block = next(blocks, None)
                if block is not None:
                    ahead.append((block, io_thread.submit(self._read, block)))

            for _ in range(cfg.read_ahead + 1):
                fetch_next()
            while ahead:
                block, reading = ahead.popleft()
                fetch_next()
                samples = reading.result()
                for p in block.tolist():
                    sample, bucket = samples[p], self.bucket(p)
                    if isinstance(sample, ShardError):
                        bad += 1
                        log.warning("skipping a bad sample (%d so far): %s", bad, sample)
                        shard = self.table.uris[self.locate(p)[0]]
                        if bad > cfg.max_bad_fraction * planned:
                            raise DataError(
                                f"{shard}: {bad} of this worker's {planned} samples are corrupt or truncated "
                                "(bytes that fail their checksum, a shard of the wrong size, or unparsable data), "
                                f"above max_bad_fraction={cfg.max_bad_fraction}; last: {sample}"
                            )
                        if bucket not in last_good:  # nothing to stand in yet: the next good one of this block
                            stand_in = next((s for q, s in samples.items()
                                             if isinstance(s, Sample) and self.bucket(q) == bucket), None)
                            if stand_in is None:
                                raise DataError(f"{shard}: no readable sample ({sample})")
                            last_good[bucket] = stand_in
                        sample = last_good[bucket]
                    last_good[bucket] = sample
                    pending.append(self._item(sample, p))
                    if len(pending) == cfg.batch_size:
                        yield self._collate(pending)
                        pending = []


class LatentLoader:
    """One rank's view of the dataset: an iterable of batches per epoch with exact resume."""

    def __init__(self, cfg: LoaderConfig, rank: int = 0, world: int = 1, table: ShardTable | None = None) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        self.cfg, self.rank = cfg, rank
        self.table = table if table is not None else load_table(cfg.source)
        if not self.table.uris:
            raise DataError(f"{cfg.source}: the dataset has no samples")
        self.layout = Layout(world, max(1, cfg.num_workers), cfg.batch_size)
        self.num_samples = sum(self.table.sizes)
        # a dataset of several latent sizes (vidgpt-encode --buckets): every batch from one bucket
        self.buckets = self.table.buckets()
        self.unit = cfg.batch_size if self.buckets else 1
        self.epoch_samples = self.num_samples  # positions in an epoch's sequence
        if self.buckets:
            counts = Counter(hw for shard in self.table.shapes or [] for hw in shard)
            self.epoch_samples = sum(counts[b] // self.unit * self.unit for b in self.buckets)
        self.epoch = 0
        self.batches = 0  # consumed by this rank in the current epoch
        self.base: list[Segment] | None = None  # None: the whole epoch; else what a resize left over
        if len(self) == 0:
            raise DataError(
                f"{cfg.source}: {self.num_samples} samples cannot fill one batch of {cfg.batch_size} on each of "
                f"{world} ranks x {self.layout.workers} workers"
            )

    def _base(self) -> list[Segment]:
        return self.base if self.base is not None else [(0, self.epoch_samples)]

    def __len__(self) -> int:
        """Batches this rank yields in the current epoch (from its start)."""
        return self.layout.batches_per_rank(self._base())

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.batches, self.base = epoch, 0, None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        dataset = _EpochDataset(self.cfg, self.table, self.epoch, self._base(), self.layout, self.rank, self.batches,
                                self.unit)
        loader = DataLoader(
            dataset, batch_size=None, num_workers=self.cfg.num_workers, collate_fn=_identity,
            prefetch_factor=2 if self.cfg.num_workers else None, persistent_workers=False,
        )
        total = len(self)
        for batch in (_pinned_ahead(loader) if self.cfg.pin_memory else map(_to_tensors, loader)):
            self.batches += 1
            yield batch
        if self.batches != total:
            raise DataError(f"epoch {self.epoch}: yielded {self.batches} batches, planned {total}")
        self.set_epoch(self.epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1, "epoch": self.epoch, "batches": self.batches, "seed": self.cfg.seed,
            "world": self.layout.world, "workers": self.layout.workers, "batch_size": self.layout.batch_size,
            "num_samples": self.num_samples, "base": None if self.base is None else [list(s) for s in self.base],
            "dataset": self.table.fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise DataError(f"unknown data-loader state version {state.get('version')!r}")
        if state["num_samples"] != self.num_samples or state["seed"] != self.cfg.seed:
            raise DataError(
                f"data-loader state is for {state['num_samples']} samples with seed {state['seed']}, but this dataset "
                f"has {self.num_samples} with seed {self.cfg.seed}: not the same data"
            )
        if state.get("dataset", self.table.fingerprint()) != self.table.fingerprint():  # older states lack it
            raise DataError(
                f"{self.cfg.source}: not the dataset this run was trained on (its content fingerprint is "
                f"{self.table.fingerprint()}, the checkpoint's loader read {state['dataset']}, both "
                f"{self.num_samples} samples); resume with the original data.path, or start a new run"
            )
        self.epoch = int(state["epoch"])
        base = None if state["base"] is None else [tuple(s) for s in state["base"]]
        old = Layout(state["world"], state["workers"], state["batch_size"])
        if old == self.layout:
            self.base, self.batches = base, int(state["batches"])  # type: ignore[assignment]
            return
        if self.buckets and old.batch_size != self.layout.batch_size:
            # the epoch's sequence is made of batch-sized units of one bucket: another batch size is another
            # sequence, so the rest of this epoch cannot be carried over
            log.warning("data.batch_size changed from %d to %d on a bucketed dataset: the rest of epoch %d "
                        "(batch %d of %d) is skipped; the next epoch starts", old.batch_size,
                        self.layout.batch_size, self.epoch, int(state["batches"]),
                        old.batches_per_rank(base if base is not None else [(0, self.epoch_samples)]))
            self.set_epoch(self.epoch + 1)
            return
        # a different layout: what every old reader had not yet consumed becomes this epoch's sequence
        old_base = base if base is not None else [(0, self.epoch_samples)]
        rest: list[Segment] = []
        for r in range(old.world):
            for w in range(old.workers):
                done = old.consumed(int(state["batches"]), w) * old.batch_size
                order = reader_order(
                    old_base, old, r, w, seed=self.cfg.seed, epoch=self.epoch, block=self.cfg.shuffle_buffer,
                    unit=self.unit,
                )
                rest += to_segments(np.sort(order[done:]))
        self.base, self.batches = rest, 0
