#!/usr/bin/env python
"""Benchmark: long-video quality of the causal model vs the bidirectional baseline (prints one JSON object).

    python tools/bench_longvideo.py --help      # same as the console script `vidgpt-bench-longvideo`
"""

from vidgpt.benchmarks.longvideo import main

if __name__ == "__main__":
    raise SystemExit(main())
