#!/usr/bin/env python
"""Benchmark: loader throughput vs a raw read of the same shards, local and S3 (one JSON object).

    python tools/bench_loader.py --help      # same as the console script `vidgpt-bench-loader`
"""

from vidgpt.benchmarks.loader import main

if __name__ == "__main__":
    raise SystemExit(main())
