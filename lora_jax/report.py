"""Counts a student asks for before training: parameters and bytes per method."""

from __future__ import annotations

import jax

from lora_jax.lora import LORA, LoRAConfig
from lora_jax.methods import get_method
from lora_jax.models import ADAPTERS, ModelConfig, abstract_variables
from lora_jax.optim import (
    check_frozen_quantized,
    count_params,
    make_optimizer,
    split,
    trainable_labels,
)
from lora_jax.trees import tree_bytes


def parameter_report(cfg: ModelConfig, method: str, lora: LoRAConfig | None = None,
                     adapter_size: int | None = None) -> dict:
    """Total and trainable parameters (with and without the head), and bytes of the trainable
    weights and of their AdamW state, for ``method`` on a model shaped like ``cfg``."""
    m = get_method(method)
    variables = abstract_variables(cfg, lora if m.creates == LORA else None,
                                   adapter_size if m.creates == ADAPTERS else None)
    check_frozen_quantized(variables, m)
    tx = make_optimizer(trainable_labels(variables, m))
    opt_state = jax.eval_shape(tx.init, variables)
    float_cfg = cfg.replace(quantize=None)  # a quantized kernel's codes are not its weights
    total = count_params(abstract_variables(float_cfg, lora if m.creates == LORA else None,
                                            adapter_size if m.creates == ADAPTERS else None))
    trainable = count_params(variables, method)
    return {
        "method": m.name,
        "lora": None if lora is None else {"rank": lora.rank, "alpha": lora.alpha,
                                           "targets": list(lora.targets),
                                           "rslora": lora.rslora, "scale": lora.scale,
                                           "dora": lora.dora, "init": lora.init},
        "total_params": total,
        "trainable_params": trainable,
        "trainable_params_without_head": count_params(variables, method, include_head=False),
        "trainable_fraction": trainable / total,
        "trainable_bytes": tree_bytes(split(variables, method)[0]),
        "optimizer_state_bytes": tree_bytes(opt_state),
        "quantize": cfg.quantize,
        "frozen_bytes": tree_bytes(split(variables, method)[1]),  # the base as stored
    }
