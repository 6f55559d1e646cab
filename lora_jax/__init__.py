"""lora_jax: LoRA (Hu et al., 2021) from scratch in JAX, Flax and optax.

The public names below are used by the notebooks and slides; keep them stable.
"""

from lora_jax.adapters import restore
from lora_jax.checkpoint import (
    CheckpointFileError,
    apply_adapter,
    read_adapter,
    save_adapter,
)
from lora_jax.compare import machine_info, step_memory
from lora_jax.config import TrainConfig
from lora_jax.data import Batcher, choose_buckets, encode, get_task, load_split
from lora_jax.export import export_merged
from lora_jax.gpt2 import (
    GPT2,
    GPT2Config,
    PretrainedGPT2,
    generate,
    init_cache,
    lm_loss,
    lm_train_step,
    load_gpt2,
)
from lora_jax.inject import inject
from lora_jax.lora import (
    LoRAConfig,
    LoRADense,
    adapted_kernel,
    column_norm,
    delta_w,
    dora_gain,
    fuse_parts,
    merge,
    pissa_factors,
    pissa_init,
    pissa_to_lora,
    unmerge,
    weight_norms,
)
from lora_jax.methods import DEFAULT_LR, METHOD_RULES, METHODS, Method, get_method, register
from lora_jax.metrics import compute
from lora_jax.models import (
    BLOCK_TARGETS,
    LORA_TARGETS,
    TARGET_PRESETS,
    Encoder,
    ModelConfig,
    SequenceClassifier,
    abstract_variables,
)
from lora_jax.optim import (
    apply_trainable,
    count_params,
    label_of,
    loraplus_labels,
    make_optimizer,
    trainable_labels,
)
from lora_jax.paper import PAPER, TABLE2_ROBERTA_BASE
from lora_jax.peft_gpt2 import (
    export_peft_gpt2,
    import_peft_gpt2,
    read_gpt2_adapter,
    save_gpt2_adapter,
)
from lora_jax.pretrained import (
    Pretrained,
    fingerprint,
    load_pretrained,
    load_tokenizer,
    save_pretrained,
)
from lora_jax.quant import (
    FORMATS,
    NF4_BLOCK,
    NF4_LEVELS,
    NF4_PAPER,
    dequantize,
    dequantize_params,
    nf4_levels,
    quantize,
    quantize_params,
)
from lora_jax.report import parameter_report
from lora_jax.run import fit
from lora_jax.serving import adapter_part, check_ids, mixed_logits, stack_adapters
from lora_jax.train import (
    TrainState,
    adapter_to_save,
    build_model,
    create_train_state,
    evaluate,
    forward,
    init_variables,
    new_train_state,
    predict,
    task_loss,
    train_step,
)
from lora_jax.trees import flatten, human_bytes, perturb, tree_bytes, unflatten

__version__ = "0.1.0"

__all__ = [
    "BLOCK_TARGETS",
    "Batcher",
    "CheckpointFileError",
    "DEFAULT_LR",
    "Encoder",
    "FORMATS",
    "GPT2",
    "GPT2Config",
    "LORA_TARGETS",
    "LoRAConfig",
    "LoRADense",
    "METHODS",
    "METHOD_RULES",
    "Method",
    "ModelConfig",
    "NF4_BLOCK",
    "NF4_LEVELS",
    "NF4_PAPER",
    "PAPER",
    "Pretrained",
    "PretrainedGPT2",
    "SequenceClassifier",
    "TABLE2_ROBERTA_BASE",
    "TARGET_PRESETS",
    "TrainConfig",
    "TrainState",
    "abstract_variables",
    "adapted_kernel",
    "adapter_part",
    "adapter_to_save",
    "apply_adapter",
    "apply_trainable",
    "build_model",
    "check_ids",
    "choose_buckets",
    "column_norm",
    "compute",
    "count_params",
    "create_train_state",
    "delta_w",
    "dequantize",
    "dequantize_params",
    "dora_gain",
    "encode",
    "evaluate",
    "export_merged",
    "export_peft_gpt2",
    "fingerprint",
    "fit",
    "flatten",
    "forward",
    "fuse_parts",
    "generate",
    "get_method",
    "get_task",
    "human_bytes",
    "import_peft_gpt2",
    "init_cache",
    "init_variables",
    "inject",
    "label_of",
    "lm_loss",
    "lm_train_step",
    "load_gpt2",
    "load_pretrained",
    "load_split",
    "load_tokenizer",
    "loraplus_labels",
    "machine_info",
    "make_optimizer",
    "merge",
    "mixed_logits",
    "new_train_state",
    "nf4_levels",
    "parameter_report",
    "perturb",
    "pissa_factors",
    "pissa_init",
    "pissa_to_lora",
    "predict",
    "quantize",
    "quantize_params",
    "read_adapter",
    "read_gpt2_adapter",
    "register",
    "restore",
    "save_adapter",
    "save_gpt2_adapter",
    "save_pretrained",
    "stack_adapters",
    "step_memory",
    "task_loss",
    "train_step",
    "trainable_labels",
    "tree_bytes",
    "unflatten",
    "unmerge",
    "weight_norms",
]
