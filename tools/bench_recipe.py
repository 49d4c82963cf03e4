#!/usr/bin/env python
"""Benchmark: two training recipes over several seeds, paired (prints one JSON object).

    python tools/bench_recipe.py --help      # same as the console script `vidgpt-bench-recipe`
"""

from vidgpt.benchmarks.recipe import main

if __name__ == "__main__":
    raise SystemExit(main())
