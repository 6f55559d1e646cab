"""One frozen base, several LoRA adapters, one batch: each example uses its own adapter.

Merging (``merge``) serves one task with no overhead, but then every example in a batch gets
that task's weights; the paper (Section 4.2) lists batching inputs of different tasks as what
merged weights cannot do. Kept unmerged, adapters can be **stacked** (leading axis = adapter)
and each example **gathers** its own ``A``, ``B`` and head:

    y_i = x_i @ W0 + (alpha/r) * (x_i @ A[k_i]) @ B[k_i]      for example i routed to adapter k_i

``jax.vmap`` over the examples writes this without a loop: inside, ``stacked[k_i]`` is a gather,
and the frozen ``x @ W0`` (the same ``W0`` for every example) stays one batched matmul.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.adapters import adapter_train_config, restore
from lora_jax.checkpoint import apply_adapter, read_adapter
from lora_jax.lora import LORA
from lora_jax.methods import get_method
from lora_jax.train import init_variables
from lora_jax.trees import flatten

HEAD = "classifier"


def adapter_part(variables: dict) -> dict:
    """What differs between tasks on one base: the ``'lora'`` tree and the task head."""
    return {LORA: variables[LORA], HEAD: variables["params"][HEAD]}


def stack_adapters(adapters: Sequence[dict], names: Sequence[str] | None = None) -> dict:
    """Stack adapter parts (``adapter_part`` of each) along a new leading axis.

    Every adapter must have the same leaves with the same shapes (same targets, rank and number
    of labels); otherwise the error names the adapter and the leaf that differ.
    """
    if not adapters:
        raise ValueError("stack_adapters: no adapters given")
    names = list(names or [f"adapter {i}" for i in range(len(adapters))])
    flat = [flatten(a) for a in adapters]
    for name, f in zip(names[1:], flat[1:], strict=True):
        if set(f) != set(flat[0]):
            diff = sorted(set(f) ^ set(flat[0]))[:3]
            raise ValueError(f"{name} has other leaves than {names[0]} (e.g. {diff}); "
                             "adapters to stack need the same targets")
        for key, x in f.items():
            if x.shape != flat[0][key].shape:
                raise ValueError(f"{name}: {key} has shape {tuple(x.shape)}, {names[0]} has "
                                 f"{tuple(flat[0][key].shape)}; stacked adapters need the same "
                                 "rank and number of labels")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *adapters)


@partial(jax.jit, static_argnums=0)
def mixed_logits(apply_fn, params: dict, stacked: dict, adapter_ids: jax.Array,
                 batch: dict) -> jax.Array:
    """Logits (B, num_labels) where row ``i`` runs the base ``params`` with adapter
    ``adapter_ids[i]`` of ``stacked`` (from ``stack_adapters``)."""

    def one(ids, types, mask, k):  # a single example: (T,) arrays and its adapter index
        chosen = jax.tree.map(lambda s: s[k], stacked)  # gather this example's A, B and head
        variables = {"params": {**params, HEAD: chosen[HEAD]}, LORA: chosen[LORA]}
        return apply_fn(variables, ids[None], types[None], mask[None])[0]

    return jax.vmap(one)(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                         adapter_ids)


def check_ids(adapter_ids: Any, n_adapters: int, batch_size: int) -> jax.Array:
    """``adapter_ids`` as int32, one per row, each in ``[0, n_adapters)`` (a gather would
    silently clamp an index out of range)."""
    ids = np.asarray(adapter_ids)
    if ids.shape != (batch_size,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"adapter_ids must be {batch_size} integers (one per row), got "
                         f"{ids.dtype} {ids.shape}")
    bad = ids[(ids < 0) | (ids >= n_adapters)]
    if bad.size:
        raise ValueError(f"adapter_ids {sorted(set(bad.tolist()))} out of range: "
                         f"{n_adapters} adapters are stacked")
    return jnp.asarray(ids, jnp.int32)


def load_stacked(paths: Sequence[str | os.PathLike], *, model: str | None = None):
    """Several LoRA adapter files trained on one base -> (model, base params, stacked adapters,
    metadata list). The base is loaded once; files from another base, with other LoRA settings
    or another head shape, are refused with the file named."""
    def lora_only(path, meta):
        if get_method(meta["method"]).creates != LORA:
            raise ValueError(f"{path}: method {meta['method']!r}; only LoRA adapters can be "
                             "stacked")

    net, variables, meta, pre = restore(paths[0], model=model)
    lora_only(paths[0], meta)
    template = init_variables(net, variables["params"], meta["method"], jax.random.key(0))
    parts, metas = [adapter_part(variables)], [meta]
    for path in paths[1:]:
        loaded = read_adapter(path)
        lora_only(path, loaded[1])
        lora = adapter_train_config(path, loaded[1]).lora_config()
        if lora != net.lora:
            raise ValueError(f"{path}: LoRA settings {lora} differ from {paths[0]}'s {net.lora}")
        v, m = apply_adapter(path, template, pre.fingerprint, template, loaded=loaded)
        parts.append(adapter_part(v))
        metas.append(m)
    base = {k: v for k, v in variables["params"].items() if k != HEAD}
    return net, base, stack_adapters(parts, [str(p) for p in paths]), metas
