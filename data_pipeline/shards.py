"""WebDataset tar shards of latent clips: the sample schema, the shard builder and range reads.

One sample is one clip (DESIGN.md):
    KEY.latents.npy   float16 (T, C, H, W), already multiplied by the codec's scale factor
    KEY.json          source, frame indices, fps, caption, codec name and scale
    KEY.txt           caption (optional)
    KEY.text.npy      float16 (L, D) text embedding (optional)
Keys contain no dots (webdataset splits a member name at the first dot of its basename). Tar members
carry fixed metadata (mtime 0, root owner, mode 0644), so the same samples give byte-identical shards.
The builder records each sample's byte offset in the tar and the CRC-32 of its bytes; the dataset index
stores them with the shard's size and sha256, so a reader can fetch any run of samples with one ranged
read (an HTTP Range GET on S3) without the rest, and check it: a shard whose size differs from the
index's, or a sample whose bytes fail their CRC, is reported by name instead of trained on.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline import storage

LATENTS = "latents.npy"
META = "json"
CAPTION = "txt"
TEXT = "text.npy"


class ShardError(RuntimeError):
    """A shard or sample that cannot be read."""


@dataclass
class Sample:
    key: str
    latents: np.ndarray  # (T, C, H, W)
    meta: dict[str, Any]
    caption: str | None = None
    text: np.ndarray | None = None  # (L, D)

    def members(self) -> list[tuple[str, bytes]]:
        if not self.key or "." in self.key or "/" in self.key:
            raise ValueError(f"sample key must be non-empty without '.' or '/': {self.key!r}")
        out = [(f"{self.key}.{LATENTS}", npy_bytes(self.latents.astype(np.float16)))]
        out.append((f"{self.key}.{META}", json.dumps(self.meta, sort_keys=True).encode()))
        if self.caption is not None:
            out.append((f"{self.key}.{CAPTION}", self.caption.encode()))
        if self.text is not None:
            out.append((f"{self.key}.{TEXT}", npy_bytes(self.text.astype(np.float16))))
        return out


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array if array.flags.c_contiguous else np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


_NPY_HEADER = re.compile(
    rb"\{'descr': '([<>|][fiub][1248])', 'fortran_order': False, 'shape': \(((?:\d+, ?)*\d*)\), \}"
)


def load_npy(data: bytes | memoryview, name: str) -> np.ndarray:
    """Parse .npy bytes without pickle. The headers np.save writes for plain C-ordered numeric arrays
    are read directly (numpy's own parser runs ast.literal_eval, ~0.5 ms a sample); anything else goes
    through np.load(allow_pickle=False)."""
    if bytes(data[:7]) == b"\x93NUMPY\x01":
        header_len = int.from_bytes(data[8:10], "little")
        m = _NPY_HEADER.match(bytes(data[10 : 10 + header_len]))
        if m is not None:
            shape = tuple(int(d) for d in m.group(2).split(b",") if d.strip())
            dtype = np.dtype(m.group(1).decode())
            count = int(np.prod(shape)) if shape else 1
            if len(data) - (10 + header_len) == count * dtype.itemsize:
                return np.frombuffer(data, dtype=dtype, count=count, offset=10 + header_len).reshape(shape)
    try:
        return np.load(io.BytesIO(bytes(data)), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt member
        raise ShardError(f"{name}: not a valid .npy array ({exc})") from exc


def parse_sample(members: dict[str, bytes | memoryview], where: str) -> Sample:
    """Rebuild a sample from its tar members {'KEY.latents.npy': bytes, ...}."""
    keys = {name.split(".", 1)[0] for name in members}
    if len(keys) != 1:
        raise ShardError(f"{where}: expected the members of one sample, got keys {sorted(keys)}")
    key = keys.pop()
    by_ext = {name.split(".", 1)[1]: data for name, data in members.items()}
    if LATENTS not in by_ext or META not in by_ext:
        raise ShardError(f"{where}: sample {key} lacks {LATENTS} or {META}")
    latents = load_npy(by_ext[LATENTS], f"{where}:{key}.{LATENTS}")
    if latents.ndim != 4:
        raise ShardError(f"{where}: {key}.{LATENTS} has shape {latents.shape}, expected (T, C, H, W)")
    try:
        meta = json.loads(bytes(by_ext[META]))
    except ValueError as exc:
        raise ShardError(f"{where}: {key}.{META} is not JSON ({exc})") from exc
    text = load_npy(by_ext[TEXT], f"{where}:{key}.{TEXT}") if TEXT in by_ext else None
    caption = bytes(by_ext[CAPTION]).decode("utf-8", errors="replace") if CAPTION in by_ext else None
    return Sample(key=key, latents=latents, meta=meta, caption=caption, text=text)


def _ustar_members(data: memoryview) -> dict[str, memoryview] | None:
    """Regular-file members of plain ustar data as zero-copy views; None if anything else is there
    (pax or GNU headers, links), for tarfile to handle."""
    out: dict[str, memoryview] = {}
    pos, end = 0, len(data)
    while pos + 512 <= end:
        header = bytes(data[pos : pos + 512])
        if header == bytes(512):
            break
        if header[257:262] != b"ustar" or header[156:157] not in (b"0", b"\0"):
            return None
        name = header[0:100].split(b"\0", 1)[0].decode("utf-8")
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8")
        try:
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            return None
        pos += 512
        if pos + size > end:
            return None
        out[f"{prefix}/{name}" if prefix else name] = data[pos : pos + size]
        pos += (size + 511) // 512 * 512
    return out


def parse_tar_bytes(data: bytes | memoryview, where: str) -> dict[str, bytes | memoryview]:
    """Every member of a (piece of a) tar archive that starts at a header."""
    fast = _ustar_members(memoryview(data))
    if fast is not None:
        return fast  # type: ignore[return-value]
    out: dict[str, bytes | memoryview] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r:") as tar:
            for info in tar:
                if info.isfile():
                    f = tar.extractfile(info)
                    assert f is not None
                    out[info.name] = f.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardError(f"{where}: corrupt or truncated tar data ({exc})") from exc
    return out


@dataclass
class ShardInfo:
    """What the dataset index records about one finished shard."""

    path: str  # relative to the dataset root
    samples: int
    bytes: int
    sha256: str
    offsets: list[int]  # byte offset of each sample, then the end of the last one
    frames: list[int]  # frames of each sample
    keys: list[str] = field(default_factory=list)
    crc32: list[int] = field(default_factory=list)  # zlib.crc32 of each sample's bytes; empty: not recorded
    sizes: list[list[int]] = field(default_factory=list)  # latent [H, W] of each sample; empty: not recorded

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path, "samples": self.samples, "bytes": self.bytes, "sha256": self.sha256,
            "offsets": self.offsets, "frames": self.frames, "keys": self.keys, "crc32": self.crc32,
            "sizes": self.sizes,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> ShardInfo:
        return ShardInfo(
            path=d["path"], samples=int(d["samples"]), bytes=int(d["bytes"]), sha256=d["sha256"],
            offsets=[int(o) for o in d["offsets"]], frames=[int(f) for f in d["frames"]], keys=list(d.get("keys", [])),
            crc32=[int(c) for c in d.get("crc32", [])], sizes=[[int(v) for v in hw] for hw in d.get("sizes", [])],
        )


class ShardBuilder:
    """Writes one tar shard to a local file and records where each sample starts."""

    def __init__(self, local_path: str | os.PathLike[str], name: str) -> None:
        self.local_path = Path(local_path)
        self.name = name
        self.local_path.parent.mkdir(parents=True, exist_ok=True)
        self._tar = tarfile.open(self.local_path, mode="w", format=tarfile.USTAR_FORMAT)
        self.offsets: list[int] = []
        self.frames: list[int] = []
        self.sizes: list[list[int]] = []
        self.keys: list[str] = []

    @property
    def samples(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        return self._tar.offset

    def add(self, sample: Sample) -> None:
        self.offsets.append(self._tar.offset)
        for name, data in sample.members():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.frames.append(int(sample.latents.shape[0]))
        self.sizes.append([int(sample.latents.shape[2]), int(sample.latents.shape[3])])
        self.keys.append(sample.key)

    def close(self) -> ShardInfo:
        end = self._tar.offset
        self._tar.close()
        digest = hashlib.sha256()
        bounds = [*self.offsets, end]
        crcs = [0] * self.samples
        pos = 0  # one pass over the file: the shard's sha256 and each sample's CRC-32
        with open(self.local_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
                view = memoryview(block)
                for i in range(self.samples):
                    lo, hi = max(bounds[i], pos), min(bounds[i + 1], pos + len(block))
                    if lo < hi:
                        crcs[i] = zlib.crc32(view[lo - pos : hi - pos], crcs[i])
                pos += len(block)
        return ShardInfo(
            path=self.name, samples=self.samples, bytes=self.local_path.stat().st_size,
            sha256=digest.hexdigest(), offsets=bounds, frames=self.frames, keys=self.keys, crc32=crcs, sizes=self.sizes,
        )

    def abort(self) -> None:
        """Drop the partial shard. Closing may fail again for the reason that aborted it (a full disk): the
        file is deleted either way, and the first error is the one reported."""
        try:
            self._tar.close()
        except OSError:
            pass
        finally:
            self.local_path.unlink(missing_ok=True)


def read_samples(
    uri: str, offsets: list[int], start: int, stop: int, *, size: int | None = None, crc32: list[int] | None = None
) -> list[Sample | ShardError]:
    """Samples [start, stop) of a shard with one ranged read, checked against the index: when the
    shard's size is not `size`, every sample of the range is a ShardError (the shard was replaced or
    truncated); a sample whose bytes fail its `crc32` entry, or that does not parse, is its ShardError
    (its neighbours still load). A failed read raises storage.StorageError (MissingError when the
    shard is gone): a network or storage failure is not bad data."""
    lo, hi = offsets[start], offsets[stop]
    try:
        data, actual = storage.read_with_size(uri, lo, hi)
    except storage.OutOfRangeError as exc:
        return [ShardError(f"{exc} (the index expects samples up to byte {hi}; truncated shard?)")] * (stop - start)
    if size is not None and actual != size:
        problem = ShardError(f"{uri}: the shard is {actual} bytes but index.json records {size} "
                             "(truncated or replaced after encoding)")
        return [problem] * (stop - start)
    out: list[Sample | ShardError] = []
    for i in range(start, stop):
        where = f"{uri} sample {i}"
        a, b = offsets[i] - lo, offsets[i + 1] - lo
        if b > len(data):
            out.append(ShardError(f"{where}: shard is truncated (needs {hi - lo} bytes at {lo}, got {len(data)})"))
            continue
        piece = memoryview(data)[a:b]
        if crc32 and zlib.crc32(piece) != crc32[i]:
            out.append(ShardError(f"{where}: checksum mismatch (CRC-32 {zlib.crc32(piece):08x}, index.json "
                                  f"records {crc32[i]:08x}): the bytes were corrupted after encoding"))
            continue
        try:
            out.append(parse_sample(parse_tar_bytes(piece, where), where))
        except ShardError as exc:
            out.append(exc)
    return out


def scan_shard(uri: str) -> tuple[list[int], list[int], list[str]]:
    """Offsets, frame counts and keys of a shard that has no index entry (reads the whole shard)."""
    data = storage.read_bytes(uri)
    offsets: list[int] = []
    frames: list[int] = []
    keys: list[str] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                if not keys or keys[-1] != key:
                    offsets.append(info.offset)
                    keys.append(key)
                    frames.append(0)
                if ext == LATENTS:
                    f = tar.extractfile(info)
                    assert f is not None
                    frames[-1] = int(load_npy(f.read(), f"{uri}:{info.name}").shape[0])
            end = tar.offset
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardError(f"{uri}: corrupt or truncated tar ({exc})") from exc
    # tar.offset after iteration points past the last member; the end-of-archive blocks follow it
    return [*offsets, end], frames, keys
