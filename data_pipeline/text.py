"""Caption text encoder: a transformers T5 encoder and its tokenizer, loaded from a local directory.

    from data_pipeline.text import TextEncoder, save_tiny_text_encoder
    save_tiny_text_encoder(Path("tiny_t5"))          # offline stand-in for T5-XXL (tests, CPU demo)
    enc = TextEncoder("tiny_t5", max_length=120)
    embs = enc.encode(["a red circle"])              # [(L_i, D) float16], valid tokens only

The embeddings keep only non-padding tokens (the model pads them itself, up to its `text_len`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Word list of the tiny tokenizer: the vocabulary of the synthetic demo videos' captions.
TINY_WORDS: tuple[str, ...] = (
    # articles, prepositions, conjunctions
    "a", "an", "the", "and", "with", "on", "in", "of", "to", "from", "over", "across", "around", "at",
    # colours
    "red", "green", "blue", "yellow", "orange", "purple", "pink", "black", "white", "gray", "brown", "cyan",
    # shapes and objects
    "circle", "square", "triangle", "rectangle", "ball", "box", "star", "line", "dot", "disk", "ring",
    "background", "screen", "left", "right", "top", "bottom", "center",
    # verbs
    "moving", "moves", "bouncing", "bounces", "rotating", "spinning", "sliding", "falling", "rising",
    "growing", "shrinking", "flying", "rolling", "jumping", "is", "are",
    # adjectives and adverbs
    "fast", "slow", "slowly", "quickly", "small", "large", "big", "tiny", "bright", "dark", "two", "three",
    ".", ",",
)
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TextEncoder:
    """T5 encoder + tokenizer from a local directory; captions -> per-caption (L_i, D) float16 states."""

    def __init__(
        self,
        path: str,
        *,
        max_length: int = 120,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 32,
    ) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.path = str(path)
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else _default_device()
        # bfloat16 on CUDA: T5 activations overflow float16.
        self.dtype = dtype if dtype is not None else (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.tokenizer, model = self._load(self.path, self.dtype)
        self.model = model.to(self.device).eval().requires_grad_(False)

    @staticmethod
    def _load(path: str, dtype: torch.dtype) -> tuple[Any, Any]:
        directory = Path(path).expanduser()
        if not directory.is_dir():
            raise ValueError(f"cannot load text encoder {path!r}: no such directory")
        try:
            from transformers import AutoTokenizer, T5EncoderModel
        except ImportError as e:
            raise ValueError(f"cannot load text encoder {path!r}: transformers is not installed") from e
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a local directory loads in a blink: no "Loading weights" bar per process
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory))
            model = T5EncoderModel.from_pretrained(str(directory), dtype=dtype)
        except Exception as e:  # noqa: BLE001 - any loader failure becomes one clear line
            reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ValueError(f"cannot load text encoder {path!r}: {type(e).__name__}: {reason}") from e
        return tokenizer, model

    @property
    def dim(self) -> int:
        """Hidden size D of the embeddings."""
        return int(self.model.config.d_model)

    def describe(self) -> dict[str, Any]:
        """JSON-able description recorded beside the embeddings."""
        return {"text_encoder": self.path, "max_length": self.max_length, "dim": self.dim}

    @torch.inference_mode()
    def encode(self, captions: list[str]) -> list[np.ndarray]:
        """One float16 array (L_i, D) per caption: last hidden states of its valid tokens, L_i <= max_length."""
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise ValueError(f"captions must be a list of str, got {type(captions).__name__}")
        out: list[np.ndarray] = []
        for start in range(0, len(captions), self.batch_size):
            batch = list(captions[start : start + self.batch_size])
            tokens = self.tokenizer(
                batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            ids = tokens["input_ids"].to(self.device)  # (B, L)
            mask = tokens["attention_mask"].to(self.device)  # (B, L), 1 = valid token
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
            hidden = hidden.float().cpu()
            valid = mask.bool().cpu()
            out.extend(hidden[i][valid[i]].to(torch.float16).numpy() for i in range(len(batch)))  # (L_i, D)
        return out


def save_tiny_text_encoder(path: Path, *, dim: int = 16, seed: int = 0) -> None:
    """Write a tiny random T5 encoder and a word-level tokenizer (built offline) to `path`.

    Loads through the ordinary `AutoTokenizer` / `T5EncoderModel` path, as a real T5 checkpoint does.
    """
    if dim < 2 or dim % 2:
        raise ValueError(f"tiny text encoder dim must be even and >= 2, got {dim}")
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel
    from transformers.utils import logging as transformers_logging

    vocab: dict[str, int] = {PAD: 0, EOS: 1, UNK: 2}
    for word in TINY_WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()  # splits words and punctuation
    backend.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, vocab[EOS])])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK, model_max_length=512
    )

    config = T5Config(
        vocab_size=len(vocab),
        d_model=dim,
        d_kv=dim // 2,
        d_ff=2 * dim,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        pad_token_id=vocab[PAD],
        eos_token_id=vocab[EOS],
        decoder_start_token_id=vocab[PAD],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5EncoderModel(config).eval()

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # a one-file model: no "Writing model shards" bar
    try:
        model.save_pretrained(path)
    finally:
        if bars:
            transformers_logging.enable_progress_bar()
    tokenizer.save_pretrained(path)
    # transformers 5 writes tokenizer_class "TokenizersBackend", unknown to transformers 4; both resolve
    # "PreTrainedTokenizerFast" to the tokenizer.json backend. Without a tokenizer_class, AutoTokenizer
    # would pick T5Tokenizer from config.json's model_type, which cannot read a WordLevel vocab.
    config_file = path / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(tokenizer_config, indent=2) + "\n")
