"""Hugging Face PEFT interop for the GPT-2 decoder (``lora_jax.gpt2``).

GPT-2's projections are ``Conv1D`` layers that store their weight as ``(in, out)``; PEFT adapts
them with ``fan_in_fan_out=True``, which only changes how it folds the update into that weight:
``lora_A`` is still ``(r, in)`` and ``lora_B`` ``(out, r)``, our A and B transposed, under the
keys ``base_model.model.transformer.h.N.attn.c_attn.lora_{A,B}.weight``.

PEFT has no parts of a fused layer. An adapter on c_attn's query and value parts (the paper's
form) is exported as the one adapter on the whole c_attn that has the same update
(``lora.fuse_parts``: rank n*r with zeros in B's key columns, alpha times n so that the scale
stays alpha / r); it imports back as that whole-layer adapter, which gives the same logits.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.checkpoint import CheckpointFileError, read_adapter, save_adapter
from lora_jax.files import check_output_dir, check_output_file
from lora_jax.gpt2 import GPT2, GPT2_TARGETS, GPT2Config, PretrainedGPT2, load_gpt2
from lora_jax.lora import FUSED_PARTS, LORA, LoRAConfig, fuse_parts
from lora_jax.peft import (
    PEFT_KIND,
    PLAIN_INITS,
    UNSUPPORTED,
    PeftFormatError,
    from_peft_key,
    read_peft_config,
    read_peft_tensors,
    to_peft_key,
    write_peft_dir,
)
from lora_jax.trees import flatten, unflatten

MODEL = "gpt2"  # an adapter file's metadata "model" for the decoder
TASK_TYPE = "CAUSAL_LM"
# PEFT target_modules entry (a dotted suffix of the module's name) per whole-layer role
MODULES = {"c_attn": "attn.c_attn", "attn_proj": "attn.c_proj", "c_fc": "mlp.c_fc",
           "mlp_proj": "mlp.c_proj"}


def save_gpt2_adapter(path: str | os.PathLike, variables: dict, lora: LoRAConfig,
                      pre: PretrainedGPT2, *, overwrite: bool = False) -> Path:
    """An adapter file of a GPT-2 LoRA (the ``'lora'`` leaves only; the base stays frozen),
    with the base's fingerprint and both configs. An existing file is replaced only with
    ``overwrite``."""
    check_output_file(path, overwrite=overwrite, reads={"the base model": pre.path})
    meta = {"task": None, "model": MODEL, "base_model": str(pre.path),
            "base_fingerprint": pre.fingerprint, "gpt2_config": asdict(pre.config),
            "lora_config": asdict(lora)}
    return save_adapter(path, variables, "lora", meta)


def read_gpt2_adapter(path: str | os.PathLike) -> tuple[dict, LoRAConfig, GPT2Config, dict]:
    """``(lora tree, LoRAConfig, GPT2Config, metadata)`` of a file ``save_gpt2_adapter`` wrote."""
    tensors, meta = read_adapter(path)
    if meta.get("model") != MODEL:
        raise CheckpointFileError(f"{path}: not a GPT-2 adapter (metadata 'model' is "
                                  f"{meta.get('model')!r})")
    try:
        cfg = GPT2Config(**meta["gpt2_config"])
        lora = LoRAConfig(**meta["lora_config"])  # (it normalises the targets list)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointFileError(f"{path}: bad gpt2_config or lora_config ({e})") from None
    extra = sorted(p for p in tensors if not p.startswith(f"{LORA}/"))
    if extra:
        raise CheckpointFileError(f"{path}: unexpected tensors {extra[:3]} in a GPT-2 LoRA "
                                  "adapter (it holds only 'lora' leaves)")
    lora_tree = unflatten({p.removeprefix(f"{LORA}/"): jnp.asarray(x)
                           for p, x in tensors.items()})
    return lora_tree, lora, cfg, meta


def _abstract(cfg: GPT2Config, lora: LoRAConfig | None) -> dict:
    ids = jnp.zeros((1, 1), jnp.int32)
    rngs = {"params": jax.random.key(0), LORA: jax.random.key(1)}
    return jax.eval_shape(lambda: GPT2(cfg, lora).init(rngs, ids))


def export_peft_gpt2(adapter_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                     base_model_name_or_path: str | None = None,
                     overwrite: bool = False) -> Path:
    """A GPT-2 adapter file as a PEFT directory for ``GPT2LMHeadModel``. Parts of c_attn
    become one whole-c_attn adapter (module docstring); with other layers adapted too, c_attn's
    larger rank goes into PEFT's ``rank_pattern`` / ``alpha_pattern``. Written atomically; an
    existing directory only with ``overwrite`` and only if export-peft wrote it."""
    reads = {"the adapter": Path(adapter_path).parent}
    check_output_dir(out_dir, PEFT_KIND, overwrite=overwrite, reads=reads)
    lora_tree, lora, cfg, meta = read_gpt2_adapter(adapter_path)
    abstract = _abstract(cfg, lora)  # shapes of 'params' and 'lora', computed once
    template = flatten(abstract[LORA])
    held = flatten(lora_tree)
    if set(held) != set(template) or any(held[p].shape != template[p].shape for p in held):
        raise CheckpointFileError(f"{adapter_path}: tensors do not match its lora_config on its "
                                  f"gpt2_config: {sorted(set(held) ^ set(template))[:4]}")
    fused, n = fuse_parts({"params": abstract["params"], LORA: lora_tree})
    grow = math.sqrt(n) if lora.rslora else n
    parts = [t for t in lora.targets if t in FUSED_PARTS]
    roles = sorted({("c_attn" if t in FUSED_PARTS else t) for t in lora.targets})
    rank, alpha, rank_pattern, alpha_pattern = lora.rank, lora.alpha, {}, {}
    if parts and roles == ["c_attn"]:
        rank, alpha = n * lora.rank, grow * lora.alpha
    elif parts:
        rank_pattern, alpha_pattern = {"c_attn": n * lora.rank}, {"c_attn": grow * lora.alpha}
    out = {}
    for path, x in flatten({LORA: fused}).items():
        key, transpose = to_peft_key(path)
        out[key] = np.ascontiguousarray(np.asarray(x).T if transpose else np.asarray(x))
    config = {
        "peft_type": "LORA", "task_type": TASK_TYPE,
        "base_model_name_or_path": base_model_name_or_path or meta.get("base_model"),
        "revision": None, "inference_mode": True, "r": rank,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": lora.dropout, "target_modules": [MODULES[r] for r in roles],
        "use_rslora": lora.rslora, "use_dora": False, "fan_in_fan_out": True, "bias": "none",
        "modules_to_save": None, "init_lora_weights": True, "layers_to_transform": None,
        "layers_pattern": None, "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
    }
    return write_peft_dir(out_dir, out, config, adapter_path, meta["base_fingerprint"],
                          overwrite=overwrite, reads=reads)


def import_peft_gpt2(peft_dir: str | os.PathLike, base: str | os.PathLike | PretrainedGPT2
                     ) -> tuple[LoRAConfig, dict, PretrainedGPT2]:
    """A PEFT LoRA directory for ``GPT2LMHeadModel`` onto the GPT-2 ``base`` (a directory or a
    loaded ``PretrainedGPT2``): ``(LoRAConfig, variables, base)``, where ``variables`` are the
    base's ``'params'`` and the adapters. Every tensor must be a LoRA A or B of a layer of every
    block, of the base's shapes; PEFT options that change the arithmetic are refused by name."""
    peft_dir = Path(peft_dir)
    config, cfg_file, weights = read_peft_config(peft_dir)
    if config.get("peft_type") != "LORA":
        raise PeftFormatError(f"{cfg_file}: peft_type {config.get('peft_type')!r} is not 'LORA'")
    if config.get("task_type") not in (TASK_TYPE, None):
        raise PeftFormatError(f"{cfg_file}: task_type {config['task_type']!r} is not "
                              f"{TASK_TYPE!r} (a GPT-2 language-model adapter)")
    if config.get("fan_in_fan_out") is not True:
        raise PeftFormatError(f"{cfg_file}: fan_in_fan_out={config.get('fan_in_fan_out')!r}; "
                              "GPT-2's Conv1D layers need True")
    for field, (off, why) in UNSUPPORTED.items():
        value = config.get(field)
        if field != "fan_in_fan_out" and value is not None and not any(
                value == v and type(value) is type(v) for v in off):
            raise PeftFormatError(f"{cfg_file}: {field}={value!r} is not supported ({why})")
    init = config.get("init_lora_weights", True)
    if not any(init == v and type(init) is type(v) for v in PLAIN_INITS) or config.get(
            "use_dora"):
        raise PeftFormatError(f"{cfg_file}: only plain LoRA imports for GPT-2 (init_lora_weights"
                              f"={init!r}, use_dora={config.get('use_dora')!r})")
    pre = base if isinstance(base, PretrainedGPT2) else load_gpt2(base)
    ours, roles = {}, set()
    inverse = {m: r for r, m in MODULES.items()}
    for key, x in read_peft_tensors(weights).items():
        mapped = from_peft_key(key)
        module = mapped[0].rsplit("/", 1)[0] if mapped else ""
        role = next((r for m, r in inverse.items() if module.endswith("/" + m.replace(".", "/"))
                     ), None)
        if mapped is None or not mapped[0].startswith(f"{LORA}/") or role is None:
            raise PeftFormatError(f"{weights}: unexpected tensor {key} (GPT-2 LoRA adapts "
                                  f"{sorted(MODULES.values())} of every block)")
        roles.add(role)
        ours[mapped[0]] = np.ascontiguousarray(x.T if mapped[1] else x)
    alpha = config.get("lora_alpha")
    try:
        lora = LoRAConfig(rank=config.get("r"), alpha=float(alpha) if isinstance(
            alpha, int | float) and not isinstance(alpha, bool) else alpha,
            dropout=float(config.get("lora_dropout") or 0.0),
            rslora=bool(config.get("use_rslora", False)),
            targets=tuple(t for t in GPT2_TARGETS if t in roles))
    except (TypeError, ValueError) as e:
        raise PeftFormatError(f"{cfg_file}: {e}") from None
    template = flatten({LORA: _abstract(pre.config, lora)[LORA]})
    missing = sorted(to_peft_key(p)[0] for p in set(template) - set(ours))
    if missing or set(ours) - set(template):
        raise PeftFormatError(f"{weights}: tensors do not match GPT-2 LoRA on "
                              f"{list(lora.targets)}: missing {missing[:3]} (adapters on some "
                              "layers only are not supported)")
    for path, want in template.items():
        if ours[path].shape != tuple(want.shape):
            key, _ = to_peft_key(path)
            raise PeftFormatError(f"{weights}: tensor {key} has shape {ours[path].T.shape}, "
                                  f"expected {tuple(want.shape)[::-1]} (r={lora.rank} and the "
                                  "base's layer sizes)")
    variables = {"params": pre.params,
                 LORA: unflatten({p.removeprefix(f"{LORA}/"): jnp.asarray(x)
                                  for p, x in ours.items()})}
    return lora, variables, pre
