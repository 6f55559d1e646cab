"""Walking nested dicts of arrays: flattened paths, sizes and bytes.

Variables, optimizer states and checkpoints are nested dicts; everything that names a leaf
uses its flattened path, ``'params/bert/encoder/layer/0/attention/self/query/kernel'``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import traverse_util


def flatten(tree: dict) -> dict[str, Any]:
    """``{'params': {'a': {'kernel': x}}}`` -> ``{'params/a/kernel': x}``."""
    return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: dict[str, Any]) -> dict:
    return traverse_util.unflatten_dict(flat, sep="/")


def size(x: Any) -> int:
    """Number of scalars of an array, or of a ``jax.ShapeDtypeStruct`` (no memory needed)."""
    return int(np.prod(x.shape)) if hasattr(x, "shape") else int(np.size(x))


def nbytes(x: Any) -> int:
    return size(x) * np.dtype(x.dtype).itemsize if hasattr(x, "dtype") else 0


def tree_bytes(tree: Any) -> int:
    """Bytes of every array leaf in a pytree (optimizer states, checkpoints, ...)."""
    return sum(nbytes(x) for x in jax.tree.leaves(tree))


def human_bytes(n: float) -> str:
    """``1234567`` -> ``'1.2 MB'`` (powers of 1000, as the tables print them)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def perturb(tree: Any, key: jax.Array, scale: float) -> Any:
    """``tree`` with ``scale * N(0, 1)`` added to every leaf, one key per leaf: adapters that
    look trained (B != 0), for demonstrations and tests of merging and latency."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                        for k, x in zip(keys, leaves, strict=True)])
