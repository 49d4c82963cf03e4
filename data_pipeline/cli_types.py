"""argparse value types shared by every command (vidgpt's and the data pipeline's)."""

from __future__ import annotations

import argparse
import math


def finite_float(text: str) -> float:
    """A float flag's value: refused (argparse's one-line error, exit status 2) unless a finite number, so
    that `--cfg-scale nan` or `--fps inf` never reaches the arithmetic."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value
