#!/usr/bin/env python
"""Write the built-in synthetic dataset: bouncing coloured shapes as mp4, with captions and a manifest.

    python tools/make_synthetic_videos.py data/synth --num 100 --size 64 --frames 48 --fps 8
    python tools/make_synthetic_videos.py --help      # same as the console script `vidgpt-make-synthetic`
"""

from data_pipeline.synthetic import main

if __name__ == "__main__":
    raise SystemExit(main())
