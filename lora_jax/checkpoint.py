"""Adapter files and resumable training states, as safetensors (never pickle).

An **adapter file** holds exactly the trainable leaves of a method (LoRA's A/B + the head,
BitFit's biases + the head, ...) under their variable paths, plus JSON metadata: what was
trained, how, on which task, and on which base model (name and weight fingerprint). Loading it
onto another base, or with shapes that do not fit, is an error that says what differs.

A **training state** holds the trainable leaves, the optimizer state, the step and the position
in the data order, so that ``--resume`` continues with the same losses as an uninterrupted run.
The frozen weights are not stored: they come from the base checkpoint, whose fingerprint is
checked. Both files are written to a temporary name and renamed (``files.atomic_write``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from lora_jax.config import TrainConfig
from lora_jax.files import atomic_write
from lora_jax.methods import method_names
from lora_jax.optim import split
from lora_jax.trees import flatten, unflatten

FORMAT = "lora_jax/1"
META_KEY = "lora_jax"


class CheckpointFileError(ValueError):
    """An adapter or state file that cannot be used; the message names the file and problem."""


def _write(path: Path, tensors: dict[str, np.ndarray], meta: dict) -> Path:
    metadata = {META_KEY: json.dumps({"format": FORMAT, **meta}, sort_keys=True)}
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=metadata))


def _read(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointFileError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="numpy") as f:  # one read: tensors and metadata
            raw = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        # TypeError: a dtype numpy lacks (bfloat16); the rest: truncated or foreign bytes
        raise CheckpointFileError(f"{path}: not a readable safetensors file ({e})") from None
    if raw is None:
        raise CheckpointFileError(f"{path}: no '{META_KEY}' metadata; not a lora_jax file")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointFileError(f"{path}: metadata is not valid JSON ({e})") from None
    found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
    if found != FORMAT:
        raise CheckpointFileError(f"{path}: unknown format {found!r} (expected {FORMAT!r})")
    return tensors, meta


# --- adapter files ------------------------------------------------------------------------------


def save_adapter(path: str | os.PathLike, variables: dict, method: str, meta: dict) -> Path:
    """Write the trainable leaves of ``variables`` under ``method`` with ``meta`` (a JSON dict
    that must name ``base_fingerprint``)."""
    if "base_fingerprint" not in meta:
        raise ValueError("adapter metadata must record base_fingerprint")
    trainable, _ = split(variables, method)
    return _write(Path(path), flatten(trainable), {**meta, "method": method})


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """The raw (flat path -> array) tensors and the metadata of an adapter file, with the
    metadata's fields checked (each problem names the file and the field)."""
    tensors, meta = _read(path)
    for field in ("method", "base_fingerprint", "task"):
        if field not in meta:
            raise CheckpointFileError(f"{path}: metadata lacks {field!r}")
    if meta["method"] not in method_names():
        raise CheckpointFileError(f"{path}: metadata field 'method' is {meta['method']!r}, "
                                  f"not one of {method_names()}")
    if not isinstance(meta["base_fingerprint"], str):
        raise CheckpointFileError(f"{path}: metadata field 'base_fingerprint' is "
                                  f"{meta['base_fingerprint']!r}, not a string")
    if meta["task"] is not None and not isinstance(meta["task"], str):
        raise CheckpointFileError(f"{path}: metadata field 'task' is {meta['task']!r}, "
                                  "not a task name")
    for field, kind in (("train_config", dict), ("model_config", dict), ("labels", list),
                        ("label_names", list), ("base_model", str)):
        if meta.get(field) is not None and not isinstance(meta[field], kind):
            raise CheckpointFileError(f"{path}: metadata field {field!r} is "
                                      f"{type(meta[field]).__name__}, expected {kind.__name__}")
    for field in ("labels", "label_names"):
        if not all(isinstance(x, str) for x in meta.get(field) or []):
            raise CheckpointFileError(f"{path}: metadata field {field!r} must list strings")
    return tensors, meta


def apply_adapter(path: str | os.PathLike, base_variables: dict, fingerprint: str,
                  template: dict, *, loaded: tuple[dict, dict] | None = None
                  ) -> tuple[dict, dict]:
    """Put an adapter file's leaves into ``base_variables``: returns (variables, metadata).

    ``template`` is the full variables tree (arrays or shapes) the adapter's method expects; the
    file must hold exactly its trainable leaves with their shapes and dtypes, and must come from
    the base whose weights have ``fingerprint``. ``loaded`` is ``read_adapter(path)``'s result
    when the caller already has it (the file is then not read again).
    """
    tensors, meta = loaded or read_adapter(path)
    if meta["base_fingerprint"] != fingerprint:
        raise CheckpointFileError(
            f"{path}: adapter was trained on base model {meta.get('base_model')!r} "
            f"(weights fingerprint {meta['base_fingerprint']}), but the base given has "
            f"fingerprint {fingerprint}; load it onto the same base model")
    expected = flatten(split(template, meta["method"])[0])
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointFileError(f"{path}: tensors do not match method {meta['method']!r} on "
                                  f"this model: missing {missing[:5]}, unexpected {extra[:5]}")
    for key, want in expected.items():
        got = tensors[key]
        if tuple(got.shape) != tuple(want.shape) or got.dtype != np.dtype(want.dtype):
            raise CheckpointFileError(f"{path}: tensor {key} is {got.dtype}{tuple(got.shape)}, "
                                      f"expected {np.dtype(want.dtype)}{tuple(want.shape)}")
        if not np.all(np.isfinite(got)):  # a NaN adapter would silently give NaN logits
            raise CheckpointFileError(f"{path}: tensor {key} holds NaN or infinite values")
    flat = flatten(base_variables)
    flat.update({k: jnp.asarray(v) for k, v in tensors.items()})
    return unflatten(flat), meta


# --- resumable training state -------------------------------------------------------------------


def save_state(path: str | os.PathLike, state: Any, position: dict, meta: dict) -> Path:
    """Write a resumable training state: trainable leaves, optimizer state, rng, ``position``
    (step, epoch, batch within the epoch) and ``meta`` (the run's config, base fingerprint)."""
    trainable, _ = split(state.variables, state.method)
    tensors = {f"trainable/{k}": v for k, v in flatten(trainable).items()}
    for i, leaf in enumerate(jax.tree.leaves(state.opt_state)):
        tensors[f"opt/{i:05d}"] = np.asarray(leaf)
    tensors["rng"] = np.asarray(jax.random.key_data(state.rng))
    tensors["step"] = np.asarray(state.step)
    return _write(Path(path), tensors, {**meta, "position": position, "method": state.method})


def load_state(path: str | os.PathLike, state: Any, meta: dict) -> tuple[Any, dict]:
    """Restore a state saved by ``save_state`` into ``state`` (a fresh one of the same run).

    Every entry of ``meta`` (config, fingerprint) must equal what the file recorded; the
    differing fields are named otherwise. Returns (state, position).
    """
    tensors, saved = _read(path)
    position = saved.get("position")
    if not (isinstance(position, dict) and all(
            isinstance(position.get(k), int) and position[k] >= 0 for k in ("epoch", "batch"))):
        raise CheckpointFileError(f"{path}: metadata field 'position' is {position!r}, "
                                  "expected {'epoch': int, 'batch': int}")
    for key in ("step", "rng"):
        if key not in tensors:
            raise CheckpointFileError(f"{path}: no {key!r} tensor; not a training state")
    diffs = [k for k in meta if not _same(k, saved.get(k), meta[k])]
    if diffs:
        detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {meta[k]!r}" for k in diffs)
        raise CheckpointFileError(f"{path}: saved run differs from this one: {detail}")
    flat = flatten(state.variables)
    trainable_keys = set(flatten(split(state.variables, state.method)[0]))
    saved_keys = {k.removeprefix("trainable/") for k in tensors if k.startswith("trainable/")}
    if saved_keys != trainable_keys:
        raise CheckpointFileError(f"{path}: trainable leaves differ from this run's "
                                  f"(e.g. {sorted(saved_keys ^ trainable_keys)[:3]})")
    for k in trainable_keys:
        flat[k] = _fit(tensors[f"trainable/{k}"], flat[k], path, k)
    leaves, treedef = jax.tree.flatten(state.opt_state)
    opt_keys = sorted(k for k in tensors if re.fullmatch(r"opt/\d{5}", k))
    if len(opt_keys) != len(leaves):
        raise CheckpointFileError(f"{path}: optimizer state has {len(opt_keys)} arrays, "
                                  f"expected {len(leaves)}")
    opt = [_fit(tensors[k], leaf, path, k) for k, leaf in zip(opt_keys, leaves, strict=True)]
    rng_data = jax.random.key_data(state.rng)
    restored = state.replace(
        step=_fit(tensors["step"], state.step, path, "step"),
        variables=unflatten(flat),
        opt_state=jax.tree.unflatten(treedef, opt),
        rng=jax.random.wrap_key_data(_fit(tensors["rng"], rng_data, path, "rng")),
    )
    return restored, position


def _same(key: str, saved: Any, now: Any) -> bool:
    """Whether a state file's metadata entry matches this run's. The run's ``config`` is
    compared as a ``TrainConfig``: a field added to lora_jax after the state was saved takes
    its default, which is what the older run did, so such a run still resumes."""
    if key == "config" and isinstance(saved, dict) and isinstance(now, dict):
        try:
            return TrainConfig.from_json(saved) == TrainConfig.from_json(now)
        except (TypeError, ValueError):
            return False
    return saved == now


def state_nbytes(state: Any, meta: dict) -> int:
    """The bytes ``save_state(path, state, position, meta)`` writes, from above (the tensors
    exactly, the header generously). Known as soon as the state exists, so a run can check its
    disk before training."""
    trainable, _ = split(state.variables, state.method)
    arrays = [*jax.tree.leaves(trainable), *jax.tree.leaves(state.opt_state), state.step,
              jax.random.key_data(state.rng)]
    data = sum(int(np.prod(np.shape(a))) * np.dtype(a.dtype).itemsize for a in arrays)
    header = 128 * len(arrays) + len(json.dumps(meta)) + 1024  # names, offsets, metadata
    return data + header


def _fit(value: np.ndarray, like: Any, path: Path, key: str) -> jax.Array:
    if value.shape == (1,) and np.shape(like) == ():  # safetensors stores scalars as (1,)
        value = value.reshape(())
    if tuple(value.shape) != tuple(np.shape(like)) or value.dtype != np.dtype(like.dtype):
        raise CheckpointFileError(f"{path}: {key} is {value.dtype}{tuple(value.shape)}, expected "
                                  f"{np.dtype(like.dtype)}{tuple(np.shape(like))}")
    return jnp.asarray(value)
