"""One jitted train step for every method: the file to read first.

``train_step(state, batch) -> (state, metrics)`` is the same function for full fine-tuning,
LoRA, BitFit, adapters and head-only training: the method (``lora_jax.methods``) only changes
the labels, hence the optimizer, hence which leaves move. Gradients are taken with respect to
all variables; the frozen ones are multiplied by nothing (``set_to_zero``), so XLA removes
their gradient matmuls from the compiled step and a LoRA step costs about two forward passes
instead of three.

The loop around it (data, epochs, checkpoints, signals) is ``lora_jax.run.fit``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lora_jax.config import TrainConfig
from lora_jax.data import Batcher
from lora_jax.glue import Task
from lora_jax.lora import LORA, pissa_init, pissa_to_lora
from lora_jax.methods import TRAINABLE, get_method
from lora_jax.metrics import compute
from lora_jax.models import SequenceClassifier, check_rank
from lora_jax.optim import (
    apply_trainable,
    check_frozen_quantized,
    make_optimizer,
    trainable_labels,
)
from lora_jax.pretrained import Pretrained
from lora_jax.trees import flatten, unflatten


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
    """Start training ``variables`` with ``tx`` (from ``make_optimizer``) under ``method``.

    The state owns a copy of ``variables``: ``train_step`` donates its input buffers, and the
    caller's arrays (say, a loaded checkpoint shared by several runs) must stay valid.
    """
    trainable_labels(variables, method)  # fail early on a path no rule covers
    variables = jax.tree.map(jnp.array, variables)  # jnp.array copies
    return TrainState(step=jnp.zeros((), jnp.int32), variables=variables,
                      opt_state=tx.init(variables), rng=rng, apply_fn=apply_fn, tx=tx,
                      method=method)


def task_loss(logits: jax.Array, labels: jax.Array, weight: jax.Array | None = None
              ) -> tuple[jax.Array, dict]:
    """Cross-entropy for classification, mean squared error when there is one output.

    ``weight`` (1 for real rows, 0 for the rows that fill a bucket's last batch) makes padding
    rows count for nothing.
    """
    logits = logits.astype(jnp.float32)
    w = jnp.ones(logits.shape[0]) if weight is None else weight.astype(jnp.float32)
    total = jnp.maximum(w.sum(), 1.0)
    if logits.shape[-1] == 1:
        per_row = (logits[:, 0] - labels.astype(jnp.float32)) ** 2
        return jnp.sum(w * per_row) / total, {}
    per_row = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return jnp.sum(w * per_row) / total, {"accuracy": jnp.sum(w * correct) / total}


def forward(apply_fn: Callable, variables: dict, batch: dict, *, deterministic: bool = True,
            rng: jax.Array | None = None) -> jax.Array:
    """Logits for a batch dict with ``input_ids``, ``token_type_ids``, ``attention_mask``."""
    rngs = None if deterministic else {"dropout": rng}
    return apply_fn(variables, batch["input_ids"], batch["token_type_ids"],
                    batch["attention_mask"], deterministic=deterministic, rngs=rngs)


def _global_norm(tree: Any, labels: Any) -> jax.Array:
    """Norm over trainable leaves only (touching frozen gradients would keep them alive)."""
    pairs = zip(jax.tree.leaves(tree), jax.tree.leaves(labels), strict=True)
    sq = [jnp.sum(jnp.square(g)) for g, lab in pairs if lab == TRAINABLE]
    return jnp.sqrt(sum(sq)) if sq else jnp.zeros(())


@partial(jax.jit, donate_argnums=0)
def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One optimizer step on one batch, jitted; the state's buffers are donated to the new
    state. On a device mesh the same function is jitted once more with the mesh's shardings
    (``lora_jax.run``); the computation does not change."""
    labels = trainable_labels(state.variables, state.method)  # static: depends on paths only
    dropout_rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(variables):
        logits = forward(state.apply_fn, variables, batch, deterministic=False, rng=dropout_rng)
        return task_loss(logits, batch["label"], batch.get("weight"))

    # allow_int: a quantized base (QLoRA) holds integer codes; their "gradient" is float0, and
    # like every frozen leaf's it is never used
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True, allow_int=True)(
        state.variables)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.variables)
    variables = apply_trainable(state.variables, updates, labels)
    metrics = {"loss": loss, "grad_norm": _global_norm(grads, labels), **aux}
    return state.replace(step=state.step + 1, variables=variables, opt_state=opt_state), metrics


@partial(jax.jit, static_argnums=0)
def predict(apply_fn: Callable, variables: dict, batch: dict) -> jax.Array:
    """Deterministic logits (no dropout) for a batch; compiled once per batch shape."""
    return forward(apply_fn, variables, batch)


def evaluate(apply_fn: Callable, variables: dict, batcher: Batcher, task: Task) -> dict:
    """GLUE metrics and mean loss of ``variables`` over every example of ``batcher``."""
    n = len(batcher.data)
    logits_all = np.zeros((n, task.num_labels), np.float32)
    for batch in batcher.epoch(0):
        index = batch.pop("index")
        logits = np.asarray(predict(apply_fn, variables, batch))
        real = index >= 0
        logits_all[index[real]] = logits[real]
    gold = batcher.data.labels
    loss, _ = task_loss(jnp.asarray(logits_all), jnp.asarray(gold))
    pred = logits_all[:, 0] if task.is_regression else logits_all.argmax(-1)
    return {**compute(task.metrics, pred, gold), "loss": float(loss)}


def build_model(pre: Pretrained, cfg: TrainConfig) -> SequenceClassifier:
    """The network ``cfg`` trains on ``pre``'s weights, with the layers its method creates;
    ``cfg``'s rank is checked against the checkpoint's layer widths here (``check_rank``), and
    its ``quantize`` against how ``pre``'s kernels are stored."""
    check_rank(cfg.lora_config(), pre.config, pre.name)
    if cfg.quantize != pre.config.quantize:
        raise ValueError(f"the run asks for base kernels stored as {cfg.quantize or 'float32'}, "
                         f"but {pre.name} was loaded as {pre.config.quantize or 'float32'}")
    return SequenceClassifier(pre.config.replace(dtype=cfg.dtype), cfg.lora_config(),
                              cfg.adapter_config())


def new_train_state(model: SequenceClassifier, params: dict, cfg: TrainConfig,
                    total_steps: int) -> TrainState:
    """The state a run of ``cfg`` starts from: ``params`` plus the variables its method
    creates (from ``cfg.seed``), AdamW under the method's labels for ``total_steps``, and the
    dropout key."""
    k_init, k_dropout = jax.random.split(jax.random.key(cfg.seed))
    variables = init_variables(model, params, cfg.method, k_init)
    check_frozen_quantized(variables, cfg.method)
    tx = make_optimizer(trainable_labels(variables, cfg.method), learning_rate=cfg.lr,
                        total_steps=total_steps, warmup_ratio=cfg.warmup_ratio,
                        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
                        loraplus_ratio=cfg.loraplus_ratio)
    return create_train_state(model.apply, variables, cfg.method, tx, k_dropout)


def init_variables(model: SequenceClassifier, params: dict, method: str, rng: jax.Array) -> dict:
    """``{'params': params}`` plus the collection the method creates (``'lora'`` adapters,
    ``'adapters'`` bottlenecks), initialised from ``rng`` by one compiled program (not the
    forward pass op by op). PiSSA then moves W's principal part into A and B (``pissa_init``)."""
    new = get_method(method).creates
    if new is None:
        return {"params": params}
    variables = {"params": params, new: _init_collection(model, new, params, rng)}
    if new == LORA and model.lora.init == "pissa":
        variables = pissa_init(variables, model.lora)
    return variables


def adapter_to_save(variables: dict, base_params: dict, cfg: TrainConfig
                    ) -> tuple[dict, TrainConfig]:
    """What an adapter file holds after training ``cfg``, with the config it records: the
    trained variables as they are, except that a PiSSA run (whose frozen kernels are residuals)
    is handed out as the plain LoRA of rank 2r that gives the same model on the original
    ``base_params`` (``pissa_to_lora``), so that eval, merge and export-peft apply it to the
    checkpoint as it is."""
    lora = cfg.lora_config()
    if lora is None or lora.init != "pissa":
        return variables, cfg
    plain_lora, plain = pissa_to_lora(variables[LORA], base_params, lora)
    adapted = {p.rsplit("/", 1)[0] for p in flatten(plain_lora)}  # module paths
    base = flatten(base_params)
    params = unflatten({p: base[p] if p.rsplit("/", 1)[0] in adapted else x  # original kernels
                        for p, x in flatten(variables["params"]).items()})
    saved = dataclasses.replace(cfg, rank=plain.rank, alpha=plain.alpha, lora_init=plain.init)
    return {**variables, "params": params, LORA: plain_lora}, saved


@partial(jax.jit, static_argnums=(0, 1))
def _init_collection(model: SequenceClassifier, collection: str, params: dict,
                     rng: jax.Array) -> dict:
    ids = jnp.zeros((1, 4), jnp.int32)  # (B, T): any shape; only the variables are kept
    _, extra = model.apply({"params": params}, ids, rngs={collection: rng}, mutable=[collection])
    return extra[collection]
