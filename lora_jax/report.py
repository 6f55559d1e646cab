"""Counts a student asks for before training: parameters and bytes per method."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lora_jax.lora import LoRAConfig
from lora_jax.models import ModelConfig, SequenceClassifier
from lora_jax.optim import count_params, make_optimizer, split, trainable_labels, tree_bytes


def abstract_variables(cfg: ModelConfig, lora: LoRAConfig | None,
                       adapter_size: int | None = None) -> dict:
    """The model's variables as shapes only (``jax.eval_shape``: no memory, no compute)."""
    model = SequenceClassifier(cfg, lora, adapter_size)
    rngs = {"params": jax.random.key(0), "lora": jax.random.key(1),
            "adapters": jax.random.key(2)}
    return jax.eval_shape(lambda: model.init(rngs, jnp.zeros((1, 8), jnp.int32)))


def parameter_report(cfg: ModelConfig, method: str, lora: LoRAConfig | None = None,
                     adapter_size: int | None = None) -> dict:
    """Total and trainable parameters (with and without the head), and bytes of the trainable
    weights and of their AdamW state, for ``method`` on a model shaped like ``cfg``."""
    variables = abstract_variables(cfg, lora, adapter_size if method == "adapter" else None)
    tx = make_optimizer(trainable_labels(variables, method))
    opt_state = jax.eval_shape(tx.init, variables)
    total = count_params(variables)
    trainable = count_params(variables, method)
    return {
        "method": method,
        "lora": None if lora is None else {"rank": lora.rank, "alpha": lora.alpha,
                                           "targets": list(lora.targets),
                                           "rslora": lora.rslora, "scale": lora.scale},
        "total_params": total,
        "trainable_params": trainable,
        "trainable_params_without_head": count_params(variables, method, include_head=False),
        "trainable_fraction": trainable / total,
        "trainable_bytes": tree_bytes(split(variables, method)[0]),
        "optimizer_state_bytes": tree_bytes(opt_state),
    }
