"""An adapter file back onto its base model: the network, the variables, its task.

``restore`` reads what ``fit`` wrote (``adapter.safetensors``): the base model it names (or one
given) must have the weights fingerprint the file recorded, and the file's tensors must be
exactly the trainable leaves of its method.
"""

from __future__ import annotations

import os

import jax

from lora_jax.checkpoint import CheckpointFileError, apply_adapter, read_adapter
from lora_jax.config import TrainConfig
from lora_jax.glue import Task, get_task
from lora_jax.models import SequenceClassifier
from lora_jax.pretrained import Pretrained, load_pretrained
from lora_jax.train import build_model, init_variables

UNSET = object()


def restore(adapter_path: str | os.PathLike, *, model: str | None = None,
            loaded: tuple[dict, dict] | None = None, quantize: str | None | object = UNSET
            ) -> tuple[SequenceClassifier, dict, dict, Pretrained]:
    """Load an adapter file onto its base model: (model, variables, metadata, pretrained).

    The base is the one the file names, or ``model`` when given; either way its weights must
    have the fingerprint the adapter recorded (a quantized base's is its float weights'). It is
    loaded as the adapter was trained (float, or the ``quantize`` format it records); a
    ``quantize`` given that differs is refused, naming both.
    """
    loaded = loaded or read_adapter(adapter_path)  # ``read_adapter``'s result, if the caller has it
    meta = loaded[1]
    cfg = adapter_train_config(adapter_path, meta)
    if quantize is not UNSET and quantize != cfg.quantize:
        raise CheckpointFileError(
            f"{adapter_path}: the adapter was trained on a base stored as "
            f"{cfg.quantize or 'float32'}, not {quantize or 'float32'}; its update is fitted to "
            "that base's rounding, so it is loaded onto that format only")
    pre = load_pretrained(model or meta.get("base_model", cfg.model),
                          num_labels=head_outputs(meta), seed=cfg.seed, quantize=cfg.quantize)
    net = build_model(pre, cfg)
    template = init_variables(net, pre.params, cfg.method, jax.random.key(0))
    variables, meta = apply_adapter(adapter_path, template, pre.fingerprint, template,
                                    loaded=loaded)
    return net, variables, meta, pre


def head_outputs(meta: dict) -> int:
    """How many outputs the head of an adapter (``read_adapter``'s metadata) has."""
    return max(len(meta.get("labels") or []), 1)


def adapter_task(path: str | os.PathLike, meta: dict, requested: str | None = None, *,
                 cross_task: bool = False) -> Task:
    """The task to evaluate an adapter on: its own by default; ``requested`` when it is the same
    task, or the adapter has none (imported from PEFT without one) and the head fits it. Another
    task's data only with ``cross_task`` (the head's outputs mean the adapter's classes, so
    the score is not that task's), and never with a head of another size."""
    own = get_task(meta["task"]) if meta.get("task") else None
    if requested is None:
        if own is None:
            raise ValueError(f"{path} names no task (imported without --task); give --task")
        return own
    task = get_task(requested)
    n = head_outputs(meta)
    if own is None or own.name == task.name:
        if task.num_labels != n:
            raise ValueError(f"{path}: the adapter's head has {n} output(s), but task "
                             f"{task.name} has {task.num_labels}")
        return task
    differ = (f"{path} was trained on {own.name} (outputs {', '.join(own.label_names)}), but "
              f"--task {task.name} scores {', '.join(task.label_names)}")
    if task.num_labels != n:
        raise ValueError(f"{differ}: a head of {n} output(s) cannot be evaluated on "
                         f"{task.num_labels}")
    if not cross_task:
        raise ValueError(f"{differ}; the score would mean nothing. Give --cross-task to "
                         f"evaluate the {own.name} adapter on {task.name} data anyway")
    return task


def adapter_train_config(path: str | os.PathLike, meta: dict) -> TrainConfig:
    """The ``TrainConfig`` an adapter file records (``read_adapter``'s metadata), checked
    before any base model is loaded: a bad field names the file and the field."""
    try:
        cfg = TrainConfig.from_json(meta.get("train_config") or {"method": meta["method"]})
    except (TypeError, ValueError) as e:
        raise CheckpointFileError(f"{path}: metadata field 'train_config' is not a valid run "
                                  f"config ({e})") from None
    if cfg.method != meta["method"]:
        raise CheckpointFileError(f"{path}: metadata says method {meta['method']!r} but its "
                                  f"train_config says {cfg.method!r}")
    return cfg
