"""The checkpoint's tokenizer: ``tokenizer.json`` with our truncation and no built-in padding,
and the padding of encoded examples into a batch. No Flax, no JAX."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import tokenizers

from lora_jax.model_dir import DEFAULT_MODEL, CheckpointError, read_json, resolve_model_dir


@dataclass
class TextTokenizer:
    """The checkpoint's ``tokenizer.json`` with our truncation and no built-in padding.

    ``encode`` gives unpadded ids per example (the collator pads to a bucket length);
    ``__call__`` pads a batch to its longest row, for quick use.
    """

    tokenizer: tokenizers.Tokenizer
    max_length: int
    pad_id: int

    def encode(self, texts_a: list[str], texts_b: list[str] | None = None
               ) -> list[tuple[list[int], list[int]]]:
        """[(input_ids, token_type_ids)] per example, truncated longest-first to max_length."""
        inputs = list(texts_a) if texts_b is None else list(zip(texts_a, texts_b, strict=True))
        return [(e.ids, e.type_ids) for e in self.tokenizer.encode_batch(inputs)]

    def __call__(self, texts_a: list[str], texts_b: list[str] | None = None) -> dict:
        enc = self.encode(texts_a, texts_b)
        t = max(len(ids) for ids, _ in enc)
        return pad_batch(enc, t, self.pad_id)


def pad_batch(encoded: list[tuple[list[int], list[int]]], length: int, pad_id: int) -> dict:
    """Right-pad encoded examples to ``length``: input_ids, token_type_ids, attention_mask."""
    b = len(encoded)
    ids = np.full((b, length), pad_id, np.int32)
    types = np.zeros((b, length), np.int32)
    mask = np.zeros((b, length), np.int32)
    for i, (x, tt) in enumerate(encoded):
        n = len(x)
        if n > length:
            raise ValueError(f"example {i} has {n} tokens, more than the pad length {length}")
        ids[i, :n], types[i, :n], mask[i, :n] = x, tt, 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def load_tokenizer(name_or_path: str | os.PathLike = DEFAULT_MODEL, *, max_length: int = 128
                   ) -> TextTokenizer:
    """The checkpoint's fast tokenizer, with its built-in padding switched off and truncation
    set to ``max_length`` (longest-first for pairs)."""
    if max_length < 4:
        raise ValueError(f"max_length must be at least 4, got {max_length}")
    model_dir = resolve_model_dir(name_or_path)
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: no tokenizer.json; lora_jax needs the fast "
                              "tokenizer file that Hugging Face saves beside the weights")
    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read tokenizer ({e})") from None
    pad_id = (tok.padding or {}).get("pad_id", 0)
    cfg_file = model_dir / "config.json"
    if cfg_file.is_file():
        hf = read_json(cfg_file)
        pad_id = hf.get("pad_token_id", pad_id)
        vocab = hf.get("vocab_size")
        if isinstance(vocab, int) and tok.get_vocab_size(with_added_tokens=True) > vocab:
            # ids past the embedding table would be clamped silently by XLA's gather
            raise CheckpointError(
                f"{path}: the tokenizer has {tok.get_vocab_size(with_added_tokens=True):,} "
                f"tokens but {cfg_file} says vocab_size {vocab:,}; the two files come from "
                "different models")
    tok.no_padding()
    tok.enable_truncation(max_length, strategy="longest_first")
    return TextTokenizer(tok, max_length, int(pad_id))
