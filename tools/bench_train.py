#!/usr/bin/env python
"""Benchmark: ZeRO-3 training step time, tokens/s, MFU and per-rank memory at 1 and 2 ranks.

    python tools/bench_train.py --help      # same as the console script `vidgpt-bench-train`
"""

from vidgpt.benchmarks.train import main

if __name__ == "__main__":
    raise SystemExit(main())
