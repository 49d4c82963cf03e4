"""Benchmarks: each `main()` prints one JSON object (console scripts `vidgpt-bench-*`)."""
