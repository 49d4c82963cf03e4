#!/usr/bin/env python
"""Benchmark: autoregressive generation with vs without the kv-cache (prints one JSON object).

    python tools/bench_kvcache.py --help      # same as the console script `vidgpt-bench-kvcache`
"""

from vidgpt.benchmarks.kvcache import main

if __name__ == "__main__":
    raise SystemExit(main())
