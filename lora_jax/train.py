"""One jitted train step for every method.

``train_step(state, batch) -> (state, metrics)`` is the same function for full fine-tuning,
LoRA, BitFit and head-only training: the method only changes the labels, hence the optimizer,
hence which leaves move. Gradients are taken with respect to all variables; the frozen ones are
multiplied by nothing (``set_to_zero``), so XLA removes their gradient matmuls from the
compiled step and a LoRA step costs about two forward passes instead of three.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from lora_jax.optim import FROZEN, TRAINABLE, trainable_labels


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes, as one pytree.

    ``variables`` holds ``'params'`` (and ``'lora'`` when adapters exist); ``rng`` is the base
    key for dropout, folded with ``step`` so a resumed run draws the same masks.
    """

    step: jax.Array
    variables: dict
    opt_state: optax.OptState
    rng: jax.Array
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
    method: str = flax.struct.field(pytree_node=False)


def create_train_state(
    apply_fn: Callable, variables: dict, method: str, tx: optax.GradientTransformation,
    rng: jax.Array,
) -> TrainState:
    """Start training ``variables`` with ``tx`` (from ``make_optimizer``) under ``method``."""
    trainable_labels(variables, method)  # fail early on a path no rule covers
    return TrainState(step=jnp.zeros((), jnp.int32), variables=variables,
                      opt_state=tx.init(variables), rng=rng, apply_fn=apply_fn, tx=tx,
                      method=method)


def task_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict]:
    """Cross-entropy for classification, mean squared error when there is one output."""
    if logits.shape[-1] == 1:
        pred = logits[:, 0]
        loss = jnp.mean((pred - labels.astype(pred.dtype)) ** 2)
        return loss, {}
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def forward(apply_fn: Callable, variables: dict, batch: dict, *, deterministic: bool = True,
            rng: jax.Array | None = None) -> jax.Array:
    """Logits for a batch dict with ``input_ids``, ``token_type_ids``, ``attention_mask``."""
    rngs = None if deterministic else {"dropout": rng}
    return apply_fn(variables, batch["input_ids"], batch["token_type_ids"],
                    batch["attention_mask"], deterministic=deterministic, rngs=rngs)


def _apply_trainable(variables: Any, updates: Any, labels: Any) -> Any:
    """``p + u`` on trainable leaves; frozen leaves are returned untouched (bit-identical)."""
    return jax.tree.map(lambda p, u, lab: p if lab == FROZEN else p + u.astype(p.dtype),
                        variables, updates, labels)


def _global_norm(tree: Any, labels: Any) -> jax.Array:
    """Norm over trainable leaves only (touching frozen gradients would keep them alive)."""
    pairs = zip(jax.tree.leaves(tree), jax.tree.leaves(labels), strict=True)
    sq = [jnp.sum(jnp.square(g)) for g, lab in pairs if lab == TRAINABLE]
    return jnp.sqrt(sum(sq)) if sq else jnp.zeros(())


@partial(jax.jit, donate_argnums=0)
def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One optimizer step on one batch; the state's buffers are donated to the new state."""
    labels = trainable_labels(state.variables, state.method)  # static: depends on paths only
    dropout_rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(variables):
        logits = forward(state.apply_fn, variables, batch, deterministic=False, rng=dropout_rng)
        return task_loss(logits, batch["label"])

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.variables)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.variables)
    variables = _apply_trainable(state.variables, updates, labels)
    metrics = {"loss": loss, "grad_norm": _global_norm(grads, labels), **aux}
    return state.replace(step=state.step + 1, variables=variables, opt_state=opt_state), metrics


@jax.jit
def eval_step(state: TrainState, batch: dict) -> jax.Array:
    """Deterministic logits for a batch (no dropout)."""
    return forward(state.apply_fn, state.variables, batch)
