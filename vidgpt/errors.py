"""Errors that name what the user must change; each command turns them into one line and an exit status."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot run, with the key at fault in the message (exit status 2)."""


class TrainingError(RuntimeError):
    """Training cannot go on (the message says why; exit status 1)."""
