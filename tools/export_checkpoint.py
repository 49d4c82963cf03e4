#!/usr/bin/env python
"""Export a sharded checkpoint (weights or EMA) to model.safetensors + config.json.

    python tools/export_checkpoint.py --help      # same as the console script `vidgpt-export`
"""

from vidgpt.export import main

if __name__ == "__main__":
    raise SystemExit(main())
