#!/usr/bin/env python
"""Benchmark: how well any predictor can place the synthetic shapes after P prompt frames (one JSON object).

    python tools/bench_motion_bound.py --help      # same as the console script `vidgpt-bench-motion-bound`
"""

from vidgpt.benchmarks.motion_bound import main

if __name__ == "__main__":
    raise SystemExit(main())
