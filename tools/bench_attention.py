#!/usr/bin/env python
"""Benchmark: attention kernels on the temporal-attention shape (prints one JSON object).

    python tools/bench_attention.py --help      # same as the console script `vidgpt-bench-attention`
"""

from vidgpt.benchmarks.attention import main

if __name__ == "__main__":
    raise SystemExit(main())
