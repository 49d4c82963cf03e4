"""vidgpt: training and sampling of ViD-GPT causal video diffusion models."""

__version__ = "0.1.0"
