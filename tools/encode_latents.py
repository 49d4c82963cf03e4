#!/usr/bin/env python
"""Offline encoding of raw video into latent WebDataset shards (local or S3).

    python tools/encode_latents.py --help      # same as the console script `vidgpt-encode`
"""

from data_pipeline.encode import main

if __name__ == "__main__":
    raise SystemExit(main())
