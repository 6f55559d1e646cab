"""lora_jax: LoRA (Hu et al., 2021) from scratch in JAX, Flax and optax.

The public names below are used by the notebooks and slides; keep them stable.
"""

from lora_jax.adapters import restore
from lora_jax.config import TrainConfig
from lora_jax.data import get_task, load_split
from lora_jax.export import export_merged
from lora_jax.lora import LoRAConfig, LoRADense, delta_w, merge, unmerge
from lora_jax.methods import DEFAULT_LR, METHODS, Method, get_method, register
from lora_jax.models import (
    BLOCK_TARGETS,
    LORA_TARGETS,
    TARGET_PRESETS,
    ModelConfig,
    SequenceClassifier,
)
from lora_jax.optim import (
    count_params,
    make_optimizer,
    trainable_labels,
)
from lora_jax.pretrained import (
    Pretrained,
    load_pretrained,
    load_tokenizer,
    save_pretrained,
)
from lora_jax.report import parameter_report
from lora_jax.run import fit
from lora_jax.train import (
    TrainState,
    build_model,
    create_train_state,
    evaluate,
    forward,
    init_variables,
    predict,
    task_loss,
    train_step,
)
from lora_jax.trees import flatten, human_bytes, tree_bytes, unflatten

__version__ = "0.1.0"

__all__ = [
    "BLOCK_TARGETS",
    "DEFAULT_LR",
    "LORA_TARGETS",
    "METHODS",
    "TARGET_PRESETS",
    "LoRAConfig",
    "Method",
    "LoRADense",
    "ModelConfig",
    "SequenceClassifier",
    "TrainConfig",
    "TrainState",
    "Pretrained",
    "build_model",
    "count_params",
    "create_train_state",
    "delta_w",
    "evaluate",
    "export_merged",
    "fit",
    "flatten",
    "forward",
    "get_method",
    "get_task",
    "human_bytes",
    "init_variables",
    "load_pretrained",
    "load_split",
    "load_tokenizer",
    "make_optimizer",
    "merge",
    "parameter_report",
    "predict",
    "register",
    "restore",
    "save_pretrained",
    "task_loss",
    "train_step",
    "trainable_labels",
    "tree_bytes",
    "unflatten",
    "unmerge",
]
