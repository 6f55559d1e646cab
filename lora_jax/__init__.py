"""lora_jax: LoRA (Hu et al., 2021) from scratch in JAX, Flax and optax.

The public names below are used by the notebooks and slides; keep them stable.
"""

from lora_jax.data import get_task, load_split
from lora_jax.export import export_merged
from lora_jax.lora import LoRAConfig, LoRADense, delta_w, merge, unmerge
from lora_jax.models import (
    BLOCK_TARGETS,
    LORA_TARGETS,
    TARGET_PRESETS,
    ModelConfig,
    SequenceClassifier,
)
from lora_jax.optim import (
    METHODS,
    count_params,
    make_optimizer,
    trainable_labels,
    tree_bytes,
)
from lora_jax.pretrained import (
    Pretrained,
    load_pretrained,
    load_tokenizer,
    save_pretrained,
)
from lora_jax.report import parameter_report
from lora_jax.train import (
    TrainConfig,
    TrainState,
    create_train_state,
    evaluate,
    fit,
    init_variables,
    predict,
    restore,
    train_step,
)

__version__ = "0.1.0"

__all__ = [
    "BLOCK_TARGETS",
    "LORA_TARGETS",
    "METHODS",
    "TARGET_PRESETS",
    "LoRAConfig",
    "LoRADense",
    "ModelConfig",
    "SequenceClassifier",
    "TrainConfig",
    "TrainState",
    "Pretrained",
    "count_params",
    "create_train_state",
    "delta_w",
    "evaluate",
    "export_merged",
    "fit",
    "get_task",
    "init_variables",
    "load_pretrained",
    "load_split",
    "load_tokenizer",
    "make_optimizer",
    "merge",
    "parameter_report",
    "predict",
    "restore",
    "save_pretrained",
    "train_step",
    "trainable_labels",
    "tree_bytes",
    "unmerge",
]
