#!/usr/bin/env python
"""Benchmark: encoding throughput and codec busy fraction (one JSON object).

    python tools/bench_encode.py --help      # same as the console script `vidgpt-bench-encode`
"""

from vidgpt.benchmarks.encode import main

if __name__ == "__main__":
    raise SystemExit(main())
