"""The codecs' names, importable without torch (the encoder's decode processes and CLIs use them)."""

CODEC_NAMES: tuple[str, ...] = ("identity", "sd-vae", "wan-vae")
VAE_CODECS: tuple[str, ...] = ("sd-vae", "wan-vae")
"""Codecs that load a VAE (--vae)."""
