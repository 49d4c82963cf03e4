"""A local S3-compatible server (moto_server on 127.0.0.1) for the tests and the loader benchmark."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request

from data_pipeline.net import free_port


class S3ServerError(RuntimeError):
    """moto_server is missing or did not start."""


def start_moto_server(timeout: float = 30.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start moto_server on a free loopback port; returns the process and its URL once it answers."""
    exe = shutil.which("moto_server")
    if exe is None:
        raise S3ServerError("moto_server not installed: pip install 'moto[server]'")
    url = f"http://127.0.0.1:{free_port()}"
    port = url.rsplit(":", 1)[1]
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", port], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return proc, url
        except Exception:  # noqa: BLE001 - not up yet
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise S3ServerError(f"moto_server did not start on {url}") from None
            time.sleep(0.2)
