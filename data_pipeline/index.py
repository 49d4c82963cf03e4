"""The dataset's bookkeeping: job parameters, per-unit commit records, partial indexes, index.json.

Layout of a dataset root (local directory or s3://bucket/prefix):

    shards/wWWWWW-ofNNNNN-SSSSSS.tar      a finished shard of worker W (one of N), sequence S
    _progress/job.json                    the encoding parameters every worker must share
    _progress/wWWWWW-ofNNNNN-SSSSSS.json  commit record of one unit: its shard (if any) and the inputs
                                          it finished (ok or failed); written after the shard is complete
    _progress/wWWWWW-ofNNNNN.done.json    a worker's partial index, written when it has finished
    index.json                            the merged index (vidgpt-encode merge-index)
    failures.jsonl                        inputs that could not be used, with the reason

A unit's inputs count as done only once its commit record exists, and a record is written only after
its shard is complete, so a crash at any point loses at most the unit in progress, which the next run
encodes again: every input ends up in exactly one committed unit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from data_pipeline import storage
from data_pipeline.shards import ShardInfo

INDEX = "index.json"
FAILURES = "failures.jsonl"
PROGRESS = "_progress"
SHARDS = "shards"
FORMAT = "vidgpt-latents"
VERSION = 1


class DatasetIndexError(RuntimeError):
    """The dataset's bookkeeping is inconsistent or incomplete."""


def worker_tag(worker: int, total: int) -> str:
    return f"w{worker:05d}-of{total:05d}"


def shard_name(worker: int, total: int, seq: int) -> str:
    return f"{SHARDS}/{worker_tag(worker, total)}-{seq:06d}.tar"


def unit_record_name(worker: int, total: int, seq: int) -> str:
    return f"{PROGRESS}/{worker_tag(worker, total)}-{seq:06d}.json"


def done_name(worker: int, total: int) -> str:
    return f"{PROGRESS}/{worker_tag(worker, total)}.done.json"


def read_json(uri: str) -> Any:
    try:
        return json.loads(storage.read_bytes(uri))
    except ValueError as exc:
        raise DatasetIndexError(f"{uri}: not valid JSON ({exc})") from exc


def write_json(uri: str, obj: Any) -> None:
    storage.write_bytes(uri, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


@dataclass
class InputRecord:
    id: str
    name: str
    status: str  # "ok" | "failed"
    reason: str | None = None
    clips: int = 0
    frames: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "status": self.status, "reason": self.reason,
                "clips": self.clips, "frames": self.frames}


@dataclass
class UnitRecord:
    worker: int
    total: int
    seq: int
    shard: ShardInfo | None
    inputs: list[InputRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "worker": self.worker, "total": self.total, "seq": self.seq,
            "shard": None if self.shard is None else self.shard.to_json(),
            "inputs": [i.to_json() for i in self.inputs],
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> UnitRecord:
        return UnitRecord(
            worker=d["worker"], total=d["total"], seq=d["seq"],
            shard=None if d["shard"] is None else ShardInfo.from_json(d["shard"]),
            inputs=[InputRecord(**i) for i in d["inputs"]],
        )


def check_job(root: str, job: dict[str, Any]) -> None:
    """Record the job's parameters, or refuse to mix with different ones already recorded."""
    uri = storage.join(root, PROGRESS, "job.json")
    if storage.exists(uri):
        old = read_json(uri)
        diff = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k))
        if diff:
            details = "; ".join(f"{k}: was {old.get(k)!r}, now {job.get(k)!r}" for k in diff)
            raise DatasetIndexError(
                f"{root} was encoded with other parameters ({details}); use the same ones to resume, "
                "or a new OUTPUT"
            )
        return
    write_json(uri, job)


def read_units(root: str, worker: int | None, total: int) -> list[UnitRecord]:
    """Committed unit records of one worker (or of all workers of the split), by (worker, seq)."""
    prefix = f"w{worker:05d}-of{total:05d}-" if worker is not None else None
    units = []
    for uri in storage.list_files(storage.join(root, PROGRESS)):
        name = uri.rsplit("/", 1)[-1]
        if not name.endswith(".json") or name.endswith(".done.json") or name == "job.json":
            continue
        if prefix is not None and not name.startswith(prefix):
            continue
        if prefix is None and f"-of{total:05d}-" not in name:
            continue
        units.append(UnitRecord.from_json(read_json(uri)))
    return sorted(units, key=lambda u: (u.worker, u.seq))


def merge_index(root: str) -> dict[str, Any]:
    """Combine every worker's partial index into index.json and failures.jsonl; returns the index."""
    job_uri = storage.join(root, PROGRESS, "job.json")
    if not storage.exists(job_uri):
        raise DatasetIndexError(f"{root}: no {PROGRESS}/job.json: nothing was encoded there")
    job = read_json(job_uri)
    total = int(job["num_workers_total"])
    missing = [w for w in range(total) if not storage.exists(storage.join(root, done_name(w, total)))]
    if missing:
        raise DatasetIndexError(
            f"{root}: worker(s) {', '.join(map(str, missing))} of {total} have not finished; re-run them "
            "(same arguments, --worker-index W) before merging"
        )
    units = read_units(root, None, total)
    sizes = storage.list_sizes(storage.join(root, SHARDS))  # one listing: every shard's real size
    shards: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    seen_inputs: dict[str, str] = {}
    seen_keys: set[str] = set()
    counts = {"ok": 0, "failed": 0}
    for unit in units:
        for rec in unit.inputs:
            if rec.id in seen_inputs:
                raise DatasetIndexError(f"{root}: input {rec.name} was committed twice")
            seen_inputs[rec.id] = rec.name
            counts[rec.status] += 1
            if rec.status == "failed":
                failures.append({"input": rec.name, "id": rec.id, "reason": rec.reason})
        if unit.shard is not None and unit.shard.samples:
            dup = seen_keys.intersection(unit.shard.keys)
            if dup:
                raise DatasetIndexError(f"{root}: sample key {sorted(dup)[0]} appears in two shards")
            seen_keys.update(unit.shard.keys)
            uri = storage.join(root, unit.shard.path)
            record = storage.join(root, unit_record_name(unit.worker, unit.total, unit.seq))
            if uri not in sizes:
                raise DatasetIndexError(f"{record}: its shard {uri} does not exist; delete the record and re-run "
                                        f"worker {unit.worker} to redo its inputs")
            if sizes[uri] != unit.shard.bytes:
                raise DatasetIndexError(
                    f"{record}: records {unit.shard.bytes} bytes but its shard {uri} has {sizes[uri]} (two encoders "
                    f"wrote worker {unit.worker}'s output?); delete both and re-run that worker to redo its inputs")
            shards.append(unit.shard.to_json())
    if len(seen_inputs) != job["num_inputs"]:
        raise DatasetIndexError(
            f"{root}: {len(seen_inputs)} of {job['num_inputs']} inputs are committed; re-run the encoder to finish"
        )
    failures_text = "".join(json.dumps(f, sort_keys=True) + "\n" for f in failures)
    storage.write_bytes(storage.join(root, FAILURES), failures_text.encode())
    return write_index(root, shards, job, counts)  # last: its presence means the dataset is complete


def write_index(
    root: str, shards: list[dict[str, Any]], job: dict[str, Any], counts: dict[str, int] | None = None
) -> dict[str, Any]:
    """Write ROOT/index.json for these shards (ShardInfo JSON, paths relative to root)."""
    index = {
        "format": FORMAT,
        "version": VERSION,
        "codec": job["codec"],
        "size": job["size"],
        **({"buckets": job["buckets"]} if job.get("buckets") else {}),
        "fps": job.get("fps"),
        "frame_stride": job.get("frame_stride", 1),
        "min_frames": job.get("min_frames"),
        "max_frames": job.get("max_frames"),
        "text_encoder": job.get("text_encoder"),
        **({"synthetic": job["synthetic"]} if job.get("synthetic") else {}),
        "num_shards": len(shards),
        "num_samples": sum(s["samples"] for s in shards),
        "num_frames": sum(sum(s["frames"]) for s in shards),
        "num_bytes": sum(s["bytes"] for s in shards),
        "inputs": {"total": job.get("num_inputs"), **(counts or {})},
        "shards": shards,
    }
    write_json(storage.join(root, INDEX), index)
    return index
