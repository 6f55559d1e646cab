"""An adapter file folded into its base and written as a Hugging Face model directory.

``export_merged`` is what ``lora-jax merge`` does: restore the adapter onto its base, fold a
LoRA update into the kernels (``lora.merge``; BitFit, head-only and full fine-tuning adapters
already hold the weights themselves), and write a directory that ``transformers`` loads with
``from_pretrained`` and ``pipeline``: the task's label names, its problem type, and the base's
tokenizer files with its length limit (``pretrained.save_pretrained``).
"""

from __future__ import annotations

import os
from pathlib import Path

from lora_jax.adapters import adapter_train_config, head_outputs, restore
from lora_jax.checkpoint import read_adapter
from lora_jax.files import check_output_dir
from lora_jax.glue import get_task
from lora_jax.lora import LORA, merge
from lora_jax.methods import REGISTRY, get_method
from lora_jax.model_dir import resolve_model_dir
from lora_jax.pretrained import MERGED_KIND, save_pretrained
from lora_jax.quant import dequantize_params, is_quantized


def hf_labels(meta: dict) -> list[str]:
    """The label names of an adapter's outputs, in output order, from its metadata: what it
    recorded (``label_names``), else its task's, else ``LABEL_i`` (an import without a task)."""
    n = head_outputs(meta)
    names = meta.get("label_names")
    if not names and meta.get("task"):
        names = list(get_task(meta["task"]).label_names)
    if not names or len(names) != n:
        names = [f"LABEL_{i}" for i in range(n)]
    return list(names)


def export_merged(adapter_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                  model: str | None = None, overwrite: bool = False,
                  loaded: tuple[dict, dict] | None = None) -> Path:
    """Fold the adapter file into its base (``model``, default the one it names) and write a
    Hugging Face model directory at ``out_dir``.

    ``out_dir`` must be new or empty, or (``overwrite``) a model directory that lora_jax wrote;
    never the base model's directory or the adapter's, whatever the flag. Checked before
    anything is loaded, and again (with the base known) before anything is written.
    """
    adapter_path = Path(adapter_path)
    loaded = loaded or read_adapter(adapter_path)  # the file is read once
    meta = loaded[1]
    base = model or meta.get("base_model") or adapter_train_config(adapter_path, meta).model
    reads = {"the adapter": adapter_path.parent, "the base model": resolve_model_dir(base)}
    check_output_dir(out_dir, MERGED_KIND, overwrite=overwrite, reads=reads)
    _, variables, meta, pre = restore(adapter_path, model=model, loaded=loaded)
    method = get_method(meta["method"])
    if not method.mergeable:
        mergeable = [m.name for m in REGISTRY.values() if m.mergeable]
        raise ValueError(f"{adapter_path}: {method.doc or method.name}: its layers add to the "
                         "network; they cannot be folded into the base weights (that is LoRA's "
                         f"advantage). Merge works for {', '.join(mergeable)}")
    if method.creates == LORA:
        variables = merge(variables, adapter_train_config(adapter_path, meta).lora_config())
    if is_quantized(variables["params"]):  # a QLoRA base: the merged model is written in float
        variables = {**variables, "params": dequantize_params(variables["params"])}
    info = {"merged_from": str(adapter_path), "method": method.name, "task": meta["task"],
            "base_model": meta.get("base_model"), "base_fingerprint": meta["base_fingerprint"]}
    return save_pretrained(variables["params"], pre.config.replace(quantize=None), out_dir,
                           tokenizer_from=pre.path,
                           labels=hf_labels(meta), overwrite=overwrite,
                           reads={**reads, "the base model": pre.path}, info=info)
