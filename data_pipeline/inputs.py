"""The encoding tool's input list: a directory of videos or a manifest, split across workers.

A directory (local or s3://) is searched recursively for video extensions; a caption may sit beside a
video as `NAME.txt`. A manifest is JSONL (`{"path": ..., "caption": ..., "start": s, "end": s}` per
line) or CSV with a header naming at least `path`; relative paths are relative to the manifest.
The list is sorted (directories) or kept in file order (manifests), then input i goes to worker
i mod N, so every worker derives its share without talking to the others.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import sys
import unicodedata
from dataclasses import dataclass

from data_pipeline import storage

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".gif")


class InputError(ValueError):
    """The input list cannot be built."""


@dataclass(frozen=True)
class InputItem:
    source: str  # local path or s3 URI of the video
    name: str  # stable name: path relative to the input directory or manifest entry
    caption: str | None = None
    start: float | None = None
    end: float | None = None

    @property
    def id(self) -> str:
        """Stable identifier of this input (and prefix of its sample keys)."""
        text = f"{self.name}|{self.start}|{self.end}"
        return "v" + hashlib.sha1(text.encode()).hexdigest()[:16]


def _float_or_none(value: object, where: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: start/end must be seconds, got {value!r}") from exc
    if not math.isfinite(seconds) or seconds < 0:
        raise InputError(f"{where}: start/end must be seconds >= 0, got {value!r}")
    return seconds


def _caption(value: object, where: str) -> str | None:
    """A manifest row's caption: a string (or none), without control characters."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InputError(f"{where}: caption must be text, got {value!r}")
    return clean_caption(value, where)


def clean_caption(text: str, where: str) -> str | None:
    """Caption text with control characters (NUL, escapes; not tabs or newlines) removed, said on stderr."""
    cleaned = "".join(c for c in text if c in "\t\n" or unicodedata.category(c) != "Cc").strip()
    if len(cleaned) != len(text.strip()):
        print(f"warning: {where}: caption has control characters (removed)", file=sys.stderr)
    return cleaned or None


def read_caption_file(uri: str) -> str | None:
    """A sidecar caption NAME.txt: UTF-8 text; bytes that are not UTF-8 are replaced (U+FFFD) and said on
    stderr, naming the file and the first bad byte's offset, so a mis-encoded caption is never silent."""
    data = storage.read_bytes(uri)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        print(f"warning: {uri}: caption is not UTF-8 (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); the bad "
              "bytes are replaced by U+FFFD; re-save the file as UTF-8 to keep its text", file=sys.stderr)
        text = data.decode("utf-8", errors="replace")
    return clean_caption(text, uri)


def _resolve(base: str, path: str) -> str:
    if storage.is_s3(path) or os.path.isabs(path):
        return path
    return storage.join(base, path)


def read_manifest(uri: str) -> list[InputItem]:
    try:
        text = storage.read_bytes(uri).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{uri}: manifest is not UTF-8 text") from exc
    base = uri.rsplit("/", 1)[0] if storage.is_s3(uri) else os.path.dirname(os.path.abspath(uri))
    rows: list[tuple[str, dict]] = []
    if uri.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise InputError(f"{uri}: CSV manifest needs a header with a 'path' column")
        rows = [(f"{uri}:{n + 2}", row) for n, row in enumerate(reader)]
    else:
        for n, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise InputError(f"{uri}:{n + 1}: not a JSON object ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise InputError(f"{uri}:{n + 1}: expected a JSON object")
            rows.append((f"{uri}:{n + 1}", row))
    items = []
    for where, row in rows:
        path = row.get("path")
        if not path:
            raise InputError(f"{where}: entry has no 'path'")
        start, end = _float_or_none(row.get("start"), where), _float_or_none(row.get("end"), where)
        if start is not None and end is not None and end <= start:
            raise InputError(f"{where}: end ({end:g} s) must be after start ({start:g} s)")
        items.append(InputItem(source=_resolve(base, str(path)), name=str(path),
                               caption=_caption(row.get("caption"), where), start=start, end=end))
    return items


def scan_directory(root: str) -> list[InputItem]:
    files = storage.list_files(root)
    present = set(files)
    items = []
    for path in files:
        if not path.lower().endswith(VIDEO_EXTENSIONS):
            continue
        caption_path = path.rsplit(".", 1)[0] + ".txt"
        caption = read_caption_file(caption_path) if caption_path in present else None
        items.append(InputItem(source=path, name=storage.relative(root, path), caption=caption))
    return items


def list_inputs(uri: str) -> list[InputItem]:
    """All inputs of a directory or manifest, in the order that defines the worker split."""
    if uri.endswith((".jsonl", ".json", ".csv")):
        items = read_manifest(uri)
    elif storage.is_s3(uri) or os.path.isdir(uri):
        items = scan_directory(uri)
    else:
        raise InputError(f"{uri}: not a directory, nor a .jsonl/.csv manifest")
    if not items:
        raise InputError(f"{uri}: no videos found (extensions {', '.join(VIDEO_EXTENSIONS)})")
    seen: dict[str, str] = {}
    for item in items:
        if item.id in seen:
            raise InputError(f"{uri}: input {item.name!r} (start {item.start}, end {item.end}) is listed twice")
        seen[item.id] = item.name
    return items


def worker_share(items: list[InputItem], worker: int, total: int) -> list[InputItem]:
    if not 0 <= worker < total:
        raise InputError(f"worker index {worker} is not in [0, {total})")
    return items[worker::total]


def inputs_digest(items: list[InputItem]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(f"{item.id}\n".encode())
    return h.hexdigest()
