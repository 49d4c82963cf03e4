"""The benchmarks' one command: `vidgpt-bench NAME [args...]` runs benchmark NAME, which prints one JSON object.

    vidgpt-bench --help            # the benchmarks, one line each
    vidgpt-bench kvcache --help    # one benchmark's options
    python -m vidgpt.benchmarks kvcache --frames 32    # the same, with a chosen interpreter
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType

from vidgpt.benchmarks import attention, kvcache, loader, train


def _encode() -> ModuleType:
    # imported on use: it imports PyAV (the `data` extra) at import time, which the other benchmarks do not need
    from vidgpt.benchmarks import encode  # noqa: PLC0415

    return encode


BENCHMARKS: dict[str, Callable[[], ModuleType]] = {
    "kvcache": lambda: kvcache,
    "train": lambda: train,
    "attention": lambda: attention,
    "loader": lambda: loader,
    "encode": _encode,
}
"""Benchmark name -> its module (with `main(argv) -> int` and a docstring whose first line says what it measures)."""


def usage() -> str:
    width = max(map(len, BENCHMARKS))
    lines = ["usage: vidgpt-bench NAME [args...]    (vidgpt-bench NAME --help: that benchmark's options)", "",
             "Each benchmark prints one JSON object on stdout. NAME is one of:"]
    for name, module in BENCHMARKS.items():
        try:
            summary = (module().__doc__ or "").strip().splitlines()[0]
        except ImportError as exc:  # an optional dependency is missing here
            summary = f"(unavailable: {exc})"
        lines.append(f"  {name:<{width}}  {summary}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, *rest = argv
    if name not in BENCHMARKS:
        print(f"vidgpt-bench: unknown benchmark {name!r}; choose from: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    return BENCHMARKS[name]().main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
