"""What trains is data: a method's label rules (``lora_jax.methods``), and the optimizer
that obeys them.

Each method is an ordered list of ``(regex, label)`` rules over flattened variable paths such as
``params/bert/encoder/layer/0/attention/self/query/kernel`` or ``lora/bert/.../query/a``. The
first rule whose regex matches decides the label, ``trainable`` or ``frozen``; a path that no
rule covers is an error, so a new kind of variable is never trained (or frozen) by accident.
The same labels decide what the optimizer updates and what an adapter file holds.

LoRA+ (Hayou et al. 2024) is one more label in the same ``multi_transform``: every trainable B
(``lora/.../b``) gets ``'trainable_b'``, an AdamW whose schedule is ``ratio`` times the others'.

Freezing is ``optax.multi_transform({'trainable': adamw, 'frozen': set_to_zero()}, labels)``:
frozen leaves get an update of exactly zero and carry no optimizer state. ``optax.masked``
alone would not do: it passes the updates of unmasked leaves through unchanged (the raw
gradients), so "frozen" weights would still move (see ``tests/test_optim.py``).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import optax

from lora_jax.lora import LORA
from lora_jax.methods import FROZEN, HEAD, TRAINABLE, Method, get_method
from lora_jax.trees import flatten, size, unflatten

LORA_B = rf"^{LORA}/.*/b$"  # the leaves LoRA+ speeds up
FAST = "trainable_b"  # their label in the optimizer when LoRA+ is on


def label_of(path: str, method: str | Method) -> str:
    """The label of one flattened path under a method's rules (first match wins)."""
    m = get_method(method)
    for pattern, label in m.rules:
        if re.search(pattern, path):
            return label
    raise ValueError(
        f"variable {path!r} is not covered by any rule of method {m.name!r}; "
        f"rules: {[p for p, _ in m.rules]}"
    )


def trainable_labels(variables: dict, method: str | Method) -> dict:
    """A tree shaped like ``variables`` with ``'trainable'`` or ``'frozen'`` at every leaf."""
    return unflatten({p: label_of(p, method) for p in flatten(variables)})


def split(variables: dict, method: str | Method) -> tuple[dict, dict]:
    """``(trainable, frozen)``: two nested dicts that partition ``variables`` by label."""
    parts: dict[str, dict[str, Any]] = {TRAINABLE: {}, FROZEN: {}}
    for path, leaf in flatten(variables).items():
        parts[label_of(path, method)][path] = leaf
    return unflatten(parts[TRAINABLE]), unflatten(parts[FROZEN])


def combine(*trees: dict) -> dict:
    """Inverse of ``split``: merge disjoint nested dicts back into one variables dict."""
    flat: dict[str, Any] = {}
    for tree in trees:
        for path, leaf in flatten(tree).items():
            if path in flat:
                raise ValueError(f"combine: {path!r} appears in more than one tree")
            flat[path] = leaf
    return unflatten(flat)


def count_params(variables: dict, method: str | Method | None = None, *,
                 include_head: bool = True) -> int:
    """Number of scalars in ``variables``; with ``method``, only the trainable ones.

    Works on real arrays and on ``jax.eval_shape`` outputs (no memory needed).
    ``include_head=False`` leaves out the task head, as the paper's counts do.
    """
    total = 0
    for path, leaf in flatten(variables).items():
        if method is not None and label_of(path, method) != TRAINABLE:
            continue
        if not include_head and re.search(HEAD, path):
            continue
        total += size(leaf)
    return total


def check_frozen_quantized(variables: dict, method: str | Method) -> None:
    """A quantized kernel's stored arrays cannot train (they are codes and their scales): a
    method whose rules would train one is refused, naming the first such leaf."""
    flat = flatten(variables)
    for path, label in flatten(trainable_labels(variables, method)).items():
        module, leaf = path.rsplit("/", 1)
        if label == TRAINABLE and leaf != "bias" and f"{module}/codes" in flat:
            raise ValueError(f"method {get_method(method).name!r} would train {path}, a "
                             "quantized kernel of the frozen base (QLoRA); choose a method that "
                             "freezes the kernels (lora, dora, bitfit, head, adapter) or a float "
                             "base")


def apply_trainable(variables: Any, updates: Any, labels: Any) -> Any:
    """``p + u`` on trainable leaves; frozen leaves are returned untouched (bit-identical: even
    ``p + 0.0`` would turn a ``-0.0`` into ``0.0``)."""
    return jax.tree.map(lambda p, u, lab: p if lab == FROZEN else p + u.astype(p.dtype),
                        variables, updates, labels)


def linear_schedule(learning_rate: float, total_steps: int, warmup_ratio: float = 0.06):
    """Linear warm-up from 0 over ``warmup_ratio`` of the steps, then linear decay to 0."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    warmup = int(round(warmup_ratio * total_steps))
    return optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, max(warmup, 1)),
         optax.linear_schedule(learning_rate, 0.0, max(total_steps - warmup, 1))],
        [warmup],
    )


def _decay_mask(params: Any) -> Any:
    """Weight decay on matrices only: not on biases or LayerNorm scales."""
    return jax.tree.map(lambda x: x.ndim > 1, params)


def loraplus_labels(labels: dict) -> dict:
    """``labels`` with every trainable LoRA B relabelled ``'trainable_b'`` (LoRA+'s group)."""
    flat = flatten(labels)
    return unflatten({p: FAST if lab == TRAINABLE and re.search(LORA_B, p) else lab
                      for p, lab in flat.items()})


def make_optimizer(
    labels: dict,
    *,
    learning_rate: float = 5e-4,
    total_steps: int = 1000,
    warmup_ratio: float = 0.06,
    weight_decay: float = 0.01,
    max_grad_norm: float | None = None,
    loraplus_ratio: float | None = None,
) -> optax.GradientTransformation:
    """AdamW (linear warm-up, linear decay) on trainable leaves, ``set_to_zero`` on frozen ones.

    ``labels`` comes from ``trainable_labels``. ``loraplus_ratio`` gives every LoRA B the rate
    ``ratio * learning_rate`` (LoRA+; the same schedule shape and weight decay). Gradient
    clipping, when asked for, sees only the trainable leaves (all of them at once, so LoRA+'s
    two groups are clipped by one norm, as ``torch.nn.utils.clip_grad_norm_`` does).
    """
    schedule = linear_schedule(learning_rate, total_steps, warmup_ratio)
    branches = {TRAINABLE: optax.adamw(schedule, weight_decay=weight_decay, mask=_decay_mask),
                FROZEN: optax.set_to_zero()}
    if loraplus_ratio is not None:
        if not any(lab == FAST for lab in flatten(loraplus_labels(labels)).values()):
            raise ValueError("loraplus_ratio: no trainable LoRA B (lora/.../b) to speed up")
        branches[FAST] = optax.adamw(lambda step: loraplus_ratio * schedule(step),
                                     weight_decay=weight_decay, mask=_decay_mask)
        labels = loraplus_labels(labels)
    tx = optax.multi_transform(branches, labels)
    if max_grad_norm is None:
        return tx
    trainable = jax.tree.map(lambda lab: lab != FROZEN, labels)
    return optax.chain(optax.masked(optax.clip_by_global_norm(max_grad_norm), trainable), tx)
