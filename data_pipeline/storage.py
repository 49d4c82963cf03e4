"""Local paths and `s3://bucket/prefix` URIs behind one small set of functions.

S3 goes through boto3 with its standard credential chain; `AWS_ENDPOINT_URL` selects an S3-compatible
endpoint (MinIO, moto, Ceph). Clients retry with exponential backoff (`VIDGPT_S3_MAX_ATTEMPTS`,
default 5), give up on a connection after `VIDGPT_S3_CONNECT_TIMEOUT` seconds (default 10) and on a read
that receives nothing for `VIDGPT_S3_READ_TIMEOUT` seconds (default 60). A request still unanswered after
`VIDGPT_S3_SLOW_S` seconds (default 30) is said on stderr once, naming the location, while it goes on.
Writes are atomic: a local file appears under its final name only when complete (written
to a temporary name, then renamed), and an S3 object is visible only once its (multipart) upload has
completed. Every failure becomes a one-line `StorageError` naming the location; credentials are never
part of a message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

S3_PREFIX = "s3://"
MULTIPART_BYTES = 64 * 1024 * 1024


class StorageError(RuntimeError):
    """A location could not be read or written."""


class MissingError(StorageError):
    """The file or object does not exist (permanent, unlike an unreachable endpoint)."""


class ExistsError(StorageError):
    """A conditional create found the file or object already there."""


class OutOfRangeError(StorageError):
    """A ranged read starts beyond the end of the file or object (it is shorter than expected)."""


class LocationError(StorageError, ValueError):
    """A location that is neither a usable local path nor a well-formed s3://bucket/prefix URL."""


def check_location(uri: str | os.PathLike[str]) -> None:
    """Refuse malformed S3 URLs ('s3:/bucket/x', 's3:bucket', 's3://' without a bucket), which would
    otherwise be taken for a local folder named 's3:'."""
    text = str(uri)
    if text[:3].lower() == "s3:" and not text.startswith(S3_PREFIX):
        raise LocationError(f"{text}: malformed S3 URL (expected s3://bucket/prefix)")
    if text.startswith(S3_PREFIX) and not text[len(S3_PREFIX) :].split("/", 1)[0]:
        raise LocationError(f"{text}: S3 URL without a bucket (expected s3://bucket/prefix)")


def is_s3(uri: str | os.PathLike[str]) -> bool:
    """True for s3://bucket/... ; raises LocationError for a malformed S3 URL (every location passes here)."""
    check_location(uri)
    return str(uri).startswith(S3_PREFIX)


def split_s3(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[len(S3_PREFIX) :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri}")
    return bucket, key


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts onto a local path or an s3 URI."""
    base = str(base)
    if is_s3(base):
        out = base.rstrip("/")
        for part in parts:
            out += "/" + part.strip("/")
        return out
    return str(Path(base, *parts))


def relative(root: str, uri: str) -> str:
    """uri relative to root (both local or both s3)."""
    root = str(root).rstrip("/")
    if is_s3(root):
        if not uri.startswith(root + "/"):
            raise ValueError(f"{uri} is not under {root}")
        return uri[len(root) + 1 :]
    return os.path.relpath(uri, root)


# ----------------------------------------------------------------------------- S3 client

_clients: dict[tuple[int, str | None], Any] = {}
_clients_lock = threading.Lock()


def s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client for this process (clients are not fork-safe, so one per pid)."""
    endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    key = (os.getpid(), endpoint_url)
    with _clients_lock:
        if key not in _clients:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": _setting("VIDGPT_S3_MAX_ATTEMPTS", 5, int), "mode": "standard"},
                connect_timeout=_setting("VIDGPT_S3_CONNECT_TIMEOUT", 10.0, float),
                read_timeout=_setting("VIDGPT_S3_READ_TIMEOUT", 60.0, float),
                max_pool_connections=32,
            )
            _clients[key] = boto3.client("s3", endpoint_url=endpoint_url, config=config)
        return _clients[key]


def _setting(name: str, default: Any, kind: type) -> Any:
    """An S3 setting from the environment: a number > 0, else StorageError naming the variable."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not value > 0 or value == float("inf"):
        raise StorageError(f"{name}={text!r}: must be a number > 0")
    return value


@contextlib.contextmanager
def _said_when_slow(uri: str) -> Iterator[None]:
    """Say on stderr, once, that a request has waited `VIDGPT_S3_SLOW_S` seconds, while it goes on waiting
    (the endpoint's timeouts and retries then decide), so that a stalled endpoint is never silent."""
    slow = _setting("VIDGPT_S3_SLOW_S", 30.0, float)
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or "AWS"
    line = (f"warning: {uri}: no answer from the S3 endpoint {endpoint} for {slow:g} s; still waiting (read timeout "
            f"{_setting('VIDGPT_S3_READ_TIMEOUT', 60.0, float):g} s x {_setting('VIDGPT_S3_MAX_ATTEMPTS', 5, int)} "
            "attempts: VIDGPT_S3_READ_TIMEOUT, VIDGPT_S3_MAX_ATTEMPTS)")
    timer = threading.Timer(slow, lambda: print(line, file=sys.stderr, flush=True))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _s3_error(uri: str, exc: BaseException) -> StorageError:
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or "AWS"
    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError):
        what = "did not answer" if isinstance(exc, ReadTimeoutError) else "did not accept a connection"
        return StorageError(f"{uri}: the S3 endpoint {endpoint} {what} in time, "
                            f"{_setting('VIDGPT_S3_MAX_ATTEMPTS', 5, int)} attempts ({exc.__class__.__name__}; "
                            "VIDGPT_S3_READ_TIMEOUT, VIDGPT_S3_CONNECT_TIMEOUT)")
    if isinstance(exc, EndpointConnectionError):
        return StorageError(f"{uri}: cannot reach the S3 endpoint {endpoint} ({exc.__class__.__name__})")
    if isinstance(exc, NoCredentialsError):
        return StorageError(f"{uri}: no S3 credentials found (set AWS_ACCESS_KEY_ID/AWS_PROFILE or an instance role)")
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        if err.get("Code") in ("NoSuchKey", "404", "NotFound"):
            return MissingError(f"{uri}: no such object")
        if err.get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return ExistsError(f"{uri}: already exists")
        if err.get("Code") in ("InvalidRange", "416"):
            return OutOfRangeError(f"{uri}: the requested bytes lie beyond the end of the object")
        return StorageError(f"{uri}: S3 error {err.get('Code', '?')}: {err.get('Message', '')}".rstrip(": "))
    return StorageError(f"{uri}: {exc.__class__.__name__}: {exc}")


def _s3_call(uri: str, fn: Any, **kwargs: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        with _said_when_slow(uri):
            return fn(**kwargs)
    except (BotoCoreError, ClientError) as exc:
        raise _s3_error(uri, exc) from exc


# ----------------------------------------------------------------------------- operations


def read_bytes(uri: str, start: int | None = None, end: int | None = None) -> bytes:
    """Bytes [start, end) of a file or object (the whole of it by default)."""
    return read_with_size(uri, start, end)[0]


def read_with_size(uri: str, start: int | None = None, end: int | None = None) -> tuple[bytes, int]:
    """Bytes [start, end) of a file or object and the whole file's (object's) size in bytes, from the
    same request (S3: the Content-Range of the ranged GET; local: fstat of the open file)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if start is not None or end is not None:
            kwargs["Range"] = f"bytes={start or 0}-{'' if end is None else end - 1}"
        response = _s3_call(uri, s3_client().get_object, **kwargs)
        content_range = str(response.get("ContentRange") or "")  # 'bytes 0-99/1234' for a ranged GET
        size = int(content_range.rsplit("/", 1)[1]) if "/" in content_range else int(response.get("ContentLength", -1))
        try:
            with _said_when_slow(uri):
                return response["Body"].read(), size
        except Exception as exc:  # connection dropped mid-stream
            raise StorageError(f"{uri}: read failed: {exc}") from exc
    try:
        with open(uri, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if start:
                f.seek(start)
            return (f.read() if end is None else f.read(end - (start or 0))), size
    except FileNotFoundError as exc:
        raise MissingError(f"{uri}: no such file") from exc
    except OSError as exc:
        raise StorageError(f"{uri}: {exc.strerror or exc}") from exc


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(uri: str, data: bytes) -> None:
    """Write a small file or object atomically."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        _s3_call(uri, s3_client().put_object, Bucket=bucket, Key=key, Body=data)
        return
    path = Path(uri)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a shared cluster's readers need what shards get
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise StorageError(f"{uri}: {exc.strerror or exc}") from exc


def create_exclusive(uri: str, data: bytes) -> bool:
    """Create a small file or object only if nothing exists there: True if this call created it,
    False if it already existed. Local: O_CREAT | O_EXCL. S3: a conditional PUT (If-None-Match: *),
    which AWS S3, MinIO and moto honour (an endpoint that ignores the condition makes this a plain put)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            _s3_call(uri, s3_client().put_object, Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ExistsError:
            return False
        return True
    path = Path(uri)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    except OSError as exc:
        raise StorageError(f"{uri}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise StorageError(f"{uri}: {exc.strerror or exc}") from exc
    return True


def upload_file(local_path: str | os.PathLike[str], uri: str) -> None:
    """Copy a finished local file to a location; it becomes visible there only once complete.

    S3: boto3's managed transfer, multipart above 64 MiB, each part retried by the client."""
    if is_s3(uri):
        from boto3.s3.transfer import TransferConfig

        bucket, key = split_s3(uri)
        config = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES)
        _s3_call(uri, s3_client().upload_file, Filename=str(local_path), Bucket=bucket, Key=key, Config=config)
        return
    path = Path(uri)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        shutil.copyfile(local_path, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise StorageError(f"{uri}: {exc.strerror or exc}") from exc


def exists(uri: str) -> bool:
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise _s3_error(uri, exc) from exc
        except Exception as exc:
            raise _s3_error(uri, exc) from exc
    return Path(uri).exists()


def list_files(prefix: str) -> list[str]:
    """Every file (object) under a directory (prefix), recursively, as full locations, sorted."""
    return sorted(list_sizes(prefix))


def list_sizes(prefix: str) -> dict[str, int]:
    """{location: size in bytes} of every file (object) under a directory (prefix), recursively (on S3
    from the listing itself: no request per object)."""
    if is_s3(prefix):
        bucket, key = split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""
        out: dict[str, int] = {}
        paginator = s3_client().get_paginator("list_objects_v2")
        pages = _s3_call(prefix, lambda: list(paginator.paginate(Bucket=bucket, Prefix=key)))
        for page in pages:
            out.update({f"{S3_PREFIX}{bucket}/{obj['Key']}": int(obj["Size"]) for obj in page.get("Contents", [])})
        return out
    root = Path(prefix)
    if not root.exists():
        return {}
    return {str(p): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def delete(uri: str) -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        _s3_call(uri, s3_client().delete_object, Bucket=bucket, Key=key)
        return
    Path(uri).unlink(missing_ok=True)
