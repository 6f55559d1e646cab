"""Hugging Face PEFT interop: a lora_jax LoRA adapter file <-> a PEFT LoRA directory.

PEFT saves a LoRA adapter as a directory: ``adapter_config.json`` (r, lora_alpha, target_modules,
...) and ``adapter_model.safetensors``. The tensors are ours, transposed (PyTorch ``Linear``
stores ``(d_out, d_in)``, Flax ``(d_in, d_out)``), under PEFT's key names::

    lora/bert/encoder/layer/0/attention/self/query/a   (d_in, r)
        <-> base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight  (r, d_in)
    lora/bert/encoder/layer/0/attention/self/query/b   (r, d_out)
        <-> base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight  (d_out, r)
    lora/bert/encoder/layer/0/attention/self/query/m   (d_out,)   (DoRA, ``use_dora``)
        <-> base_model.model.bert.encoder.layer.0.attention.self.query.lora_magnitude_vector
    params/classifier/kernel  (d, n)  <->  base_model.model.classifier.weight  (n, d)

and the same update ``scale * x @ A @ B`` with ``scale = lora_alpha / r`` (``use_rslora``:
``lora_alpha / sqrt(r)``). The head is PEFT's ``modules_to_save`` copy, saved under the head's
own name (RoBERTa: ``classifier.dense`` and ``classifier.out_proj``). Only transposes happen, so
a round trip is bit-exact. DoRA (``use_dora``) is the ``dora`` method here; a PiSSA adapter
is exchanged in the plain rank-2r form both libraries save it as (PEFT's
``path_initial_model_for_weight_conversion``). PEFT options that change the arithmetic otherwise
(LoRA biases, per-layer ranks, layer subsets, fan_in_fan_out, an unconverted base-modifying
initialisation) are refused with the file and field named; weights are read from safetensors
only, never from a pickled ``adapter_model.bin``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from lora_jax.checkpoint import CheckpointFileError, read_adapter, save_adapter
from lora_jax.config import TrainConfig
from lora_jax.files import atomic_write_dir, check_output_dir, check_output_file
from lora_jax.glue import get_task
from lora_jax.lora import LORA, LoRAConfig
from lora_jax.methods import REGISTRY, Method, get_method
from lora_jax.models import (
    LORA_TARGETS,
    POOLER_MODULE,
    ROLE_MODULES,
    ModelConfig,
    SequenceClassifier,
    abstract_variables,
)
from lora_jax.optim import split
from lora_jax.pretrained import (
    ALIASES,
    CheckpointError,
    Pretrained,
    hf_to_path,
    load_config,
    load_pretrained,
    path_to_hf,
)
from lora_jax.trees import flatten, unflatten

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
PEFT_KIND = "PEFT adapter"  # the manifest kind of a directory export_peft writes
PREFIX = "base_model.model."  # PEFT's prefix of every saved key (PeftModel -> LoraModel -> model)
MAGNITUDE = "lora_magnitude_vector"  # PEFT's name of DoRA's m (saved without ".weight")
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # what the 'minilm' alias stands for
HEAD_MODULES = ["classifier", "score"]  # PEFT's modules_to_save for task_type SEQ_CLS

# The target_modules entry per role. PEFT matches a list entry against a module's full name
# exactly or as a dotted suffix, so "output.dense" would also select "attention.output.dense":
# targeting "output" alone needs a regex (see ``target_modules``).
TARGET_NAMES = {
    "query": "query",
    "key": "key",
    "value": "value",
    "attention_output": "attention.output.dense",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
    "pooler": POOLER_MODULE,
}

# PEFT options lora_jax cannot represent: field -> (values that mean "off", why).
UNSUPPORTED = {
    "fan_in_fan_out": ((False, None), "weights stored (in, out), as GPT-2's Conv1D"),
    "bias": (("none", None), "trained biases besides LoRA"),
    "lora_bias": ((False, None), "a bias on lora_B"),
    "rank_pattern": (({}, None), "per-module ranks"),
    "alpha_pattern": (({}, None), "per-module alphas"),
    "layers_to_transform": ((None, []), "adapters on some layers only"),
    "layer_replication": ((None, []), "replicated layers"),
    "target_parameters": ((None, []), "LoRA on raw parameters"),
    "trainable_token_indices": ((None, {}, []), "trained embedding rows"),
    "use_qalora": ((False, None), "QA-LoRA"),
    "alora_invocation_tokens": ((None, []), "activated LoRA"),
}
# init_lora_weights values that only chose A and B's starting point; the others (pissa, olora,
# corda, loftq, lora_ga, ...) also change the base weights, which lora_jax keeps as loaded.
PLAIN_INITS = (True, False, "gaussian", "orthogonal", "eva")


class PeftFormatError(CheckpointFileError):
    """A PEFT directory lora_jax cannot use; the message names the file and the problem."""


# --- key names ----------------------------------------------------------------------------------


def to_peft_key(path: str) -> tuple[str, bool]:
    """Our flat adapter path -> (PEFT's key, transpose?). ``lora/<module>/a`` -> ``lora_A``."""
    if path.startswith(f"{LORA}/"):
        module, leaf = path[len(LORA) + 1:].rsplit("/", 1)
        name = {"a": "lora_A.weight", "b": "lora_B.weight", "m": MAGNITUDE}[leaf]
        return f"{PREFIX}{module.replace('/', '.')}.{name}", leaf != "m"
    if path.startswith("params/classifier/"):
        key, transpose = path_to_hf(path.removeprefix("params/"))
        return PREFIX + key, transpose
    raise ValueError(f"{path}: not a LoRA or head path; PEFT export holds only those")


def from_peft_key(key: str) -> tuple[str, bool] | None:
    """PEFT's key -> (our flat path, transpose?), or None for a key with no place here."""
    if not key.startswith(PREFIX):
        return None
    rest = key[len(PREFIX):]
    m = re.fullmatch(r"(.+)\.lora_([AB])\.weight", rest)
    if m:
        return f"{LORA}/{m[1].replace('.', '/')}/{m[2].lower()}", True
    m = re.fullmatch(rf"(.+)\.{MAGNITUDE}", rest)
    if m:
        return f"{LORA}/{m[1].replace('.', '/')}/m", False
    if rest.startswith("classifier.") and ".lora_" not in rest:
        path, transpose = hf_to_path(rest)
        return f"params/{path}", transpose
    return None


def role_of(module: str, model_type: str) -> str | None:
    """``bert.encoder.layer.3.attention.self.query`` -> ``query``, ``bert.pooler.dense`` ->
    ``pooler`` (None: not a layer lora_jax adapts)."""
    if model_type == "bert" and module == f"{model_type}.{POOLER_MODULE}":
        return "pooler"
    m = re.fullmatch(rf"{model_type}\.encoder\.layer\.\d+\.(.+)", module)
    inverse = {v: k for k, v in ROLE_MODULES.items()}
    return inverse.get(m[1]) if m else None


def target_modules(targets: tuple[str, ...], model_type: str) -> list[str] | str:
    """PEFT's ``target_modules`` that select exactly the layers of ``targets``: a list of names
    (matched as dotted suffixes), or a regex when "output" is targeted without
    "attention_output" (no suffix tells ``layer.N.output.dense`` from
    ``layer.N.attention.output.dense``)."""
    roles = [t for t in LORA_TARGETS if t in targets]
    if "output" in roles and "attention_output" not in roles:
        block = "|".join(re.escape(ROLE_MODULES[t]) for t in roles if t in ROLE_MODULES)
        pattern = rf"{model_type}\.encoder\.layer\.\d+\.(?:{block})"
        if "pooler" in roles:
            pattern = rf"(?:{pattern}|{model_type}\.{re.escape(POOLER_MODULE)})"
        return pattern
    return [TARGET_NAMES[t] for t in roles]


def peft_selects(config: dict, module: str) -> bool:
    """Whether PEFT would put LoRA on ``module`` (a dotted name in the HF model), by the rules of
    ``peft.tuners.tuners_utils.check_target_module_exists`` (layers_to_transform excluded:
    lora_jax refuses it): exclude_modules, then modules_to_save, then target_modules (a str is a
    full-match regex; a list entry matches the whole name or a dotted suffix)."""

    def listed(names: Any) -> bool:
        if isinstance(names, str):
            return re.fullmatch(names, module) is not None
        return any(module == n or module.endswith(f".{n}") for n in names or ())

    if config.get("exclude_modules") and listed(config["exclude_modules"]):
        return False
    if any(re.match(rf"(^|.*\.){m}($|\..*)", module) for m in config.get("modules_to_save") or ()):
        return False
    return listed(config.get("target_modules"))


def _dense_modules(cfg: ModelConfig) -> list[str]:
    """Dotted HF names of every module with a kernel (the candidates for LoRA)."""
    shapes = _template(cfg, None)
    return sorted({p.removeprefix("params/").rsplit("/", 1)[0].replace("/", ".")
                   for p in shapes if p.endswith("/kernel")})


def _template(cfg: ModelConfig, lora: LoRAConfig | None) -> dict[str, Any]:
    """Flat path -> ShapeDtypeStruct of all variables of the model (no weights computed)."""
    return flatten(abstract_variables(cfg, lora))


def peft_method(dora: bool = False) -> Method:
    """The registered method that PEFT's ``peft_type: LORA`` maps to (``use_dora``: DoRA's)."""
    return next(m for m in REGISTRY.values() if m.peft_type == "LORA"
                and dict(m.lora_options).get("dora", False) == dora)


def _adapter_template(cfg: ModelConfig, lora: LoRAConfig) -> dict[str, Any]:
    """Flat path -> shape of exactly the leaves a LoRA adapter file holds (A, B, DoRA's m and
    the head)."""
    return flatten(split(unflatten(_template(cfg, lora)), peft_method(lora.dora))[0])


def _module_of(path: str) -> str:
    """``lora/bert/.../query/a`` -> ``bert.....query``: the dotted name of the adapted layer."""
    return path[len(LORA) + 1:].rsplit("/", 1)[0].replace("/", ".")


# --- export -------------------------------------------------------------------------------------


def peft_config(lora: LoRAConfig, model_type: str, base_model_name_or_path: str | None) -> dict:
    """The ``adapter_config.json`` PEFT would write for this adapter (the long-standing fields;
    PEFT fills every other with its default)."""
    alpha = int(lora.alpha) if float(lora.alpha).is_integer() else lora.alpha
    return {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": lora.rank,
        "lora_alpha": alpha,
        "lora_dropout": lora.dropout,
        "target_modules": target_modules(lora.targets, model_type),
        "use_rslora": lora.rslora,
        "use_dora": lora.dora,
        "fan_in_fan_out": False,
        "bias": "none",
        "modules_to_save": list(HEAD_MODULES),
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def export_peft(adapter_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                base_model_name_or_path: str | None = None, overwrite: bool = False) -> Path:
    """Write a lora_jax LoRA adapter file as a PEFT directory (``adapter_config.json`` +
    ``adapter_model.safetensors``) that ``PeftModel.from_pretrained(base, out_dir)`` loads.

    ``base_model_name_or_path`` defaults to the adapter's base model (the Hub id for
    ``minilm``). The directory appears complete or not at all (written beside it, then renamed).
    An existing ``out_dir`` must be empty, or (``overwrite``) a PEFT export that lora_jax wrote
    and nothing else; never the adapter's own directory (``files.check_output_dir``).
    """
    reads = {"the adapter": Path(adapter_path).parent}
    check_output_dir(out_dir, PEFT_KIND, overwrite=overwrite, reads=reads)  # before any work
    tensors, meta = read_adapter(adapter_path)
    if get_method(meta["method"]).peft_type != "LORA":  # LoRA and DoRA
        raise CheckpointFileError(f"{adapter_path}: method {meta['method']!r} is not LoRA; only "
                                  "LoRA adapters have a PEFT LoRA form")
    for field in ("model_config", "train_config"):
        if field not in meta:
            raise CheckpointFileError(f"{adapter_path}: metadata lacks {field!r}")
    try:
        cfg = ModelConfig(**meta["model_config"])
        lora = TrainConfig.from_json(meta["train_config"]).lora_config()
    except (TypeError, ValueError) as e:
        raise CheckpointFileError(f"{adapter_path}: bad model or train config ({e})") from None
    expected = _adapter_template(cfg, lora)
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointFileError(f"{adapter_path}: tensors do not match its LoRA config: "
                                  f"missing {missing[:5]}, unexpected {extra[:5]}")
    out: dict[str, np.ndarray] = {}
    for path in sorted(tensors):
        x = tensors[path]
        if tuple(x.shape) != tuple(expected[path].shape):
            raise CheckpointFileError(f"{adapter_path}: tensor {path} has shape "
                                      f"{tuple(x.shape)}, expected {tuple(expected[path].shape)}")
        key, transpose = to_peft_key(path)
        out[key] = np.ascontiguousarray(x.T if transpose else x)
    base = meta.get("base_model")
    if base_model_name_or_path is None and base is not None:
        base_model_name_or_path = MINILM_HUB_ID if base in ALIASES else str(base)
    config = peft_config(lora, cfg.model_type, base_model_name_or_path)
    return write_peft_dir(out_dir, out, config, adapter_path, meta["base_fingerprint"],
                          overwrite=overwrite, reads=reads)


def write_peft_dir(out_dir: str | os.PathLike, tensors: dict[str, np.ndarray], config: dict,
                   adapter_path: str | os.PathLike, base_fingerprint: str, *, overwrite: bool,
                   reads: dict[str, Path]) -> Path:
    """``adapter_model.safetensors`` + ``adapter_config.json`` as one atomic directory, with a
    manifest naming the adapter file it came from (``files.atomic_write_dir``)."""

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    info = {"exported_from": str(adapter_path), "base_fingerprint": base_fingerprint}
    return atomic_write_dir(Path(out_dir), write, kind=PEFT_KIND, overwrite=overwrite,
                            reads=reads, info=info)


# --- import -------------------------------------------------------------------------------------


@dataclass
class PeftImport:
    """A PEFT LoRA adapter as lora_jax sees it: ``variables`` holds the adapter's leaves
    (``{'lora': A/B tree, 'params': {'classifier': head}}``), ``lora`` its config, and
    ``pretrained`` the base it was checked against."""

    lora: LoRAConfig
    variables: dict
    pretrained: Pretrained
    base: str
    peft_config: dict
    source: Path

    def model(self) -> SequenceClassifier:
        return SequenceClassifier(self.pretrained.config, self.lora)

    def full_variables(self) -> dict:
        """The base's ``'params'`` with this adapter's head, plus the ``'lora'`` collection."""
        params = {**self.pretrained.params, **self.variables["params"]}
        return {"params": params, LORA: self.variables[LORA]}


def read_peft_config(peft_dir: Path) -> tuple[dict, Path, Path]:
    """``(adapter_config.json as a dict, its path, the weights' path)`` of a PEFT directory;
    a missing file, a pickle instead of safetensors or bad JSON is an error naming the file."""
    if not peft_dir.is_dir():
        raise PeftFormatError(f"{peft_dir}: no such directory (a PEFT adapter directory holds "
                              f"{CONFIG_FILE} and {WEIGHTS_FILE})")
    cfg_file, weights = peft_dir / CONFIG_FILE, peft_dir / WEIGHTS_FILE
    if not cfg_file.is_file():
        raise PeftFormatError(f"{cfg_file}: missing; not a PEFT adapter directory")
    if not weights.is_file():
        if (peft_dir / PICKLE_FILE).is_file():
            raise PeftFormatError(
                f"{peft_dir / PICKLE_FILE}: a pickle file, which lora_jax never loads (it can run "
                f"code); save the adapter with PEFT's save_pretrained(..., "
                f"safe_serialization=True) to get {WEIGHTS_FILE}")
        raise PeftFormatError(f"{weights}: missing")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PeftFormatError(f"{cfg_file}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise PeftFormatError(f"{cfg_file}: not a JSON object")
    return config, cfg_file, weights


def _lora_config(config: dict, cfg_file: Path) -> LoRAConfig:
    """LoRAConfig (targets filled in later) from adapter_config.json; refuses what we can't do."""
    if config.get("peft_type") != "LORA":
        raise PeftFormatError(f"{cfg_file}: peft_type {config.get('peft_type')!r} is not 'LORA'; "
                              "lora_jax imports LoRA adapters only")
    if config.get("task_type") != "SEQ_CLS":
        raise PeftFormatError(f"{cfg_file}: task_type {config.get('task_type')!r} is not "
                              "'SEQ_CLS'; lora_jax imports sequence-classification adapters")
    for field, (off, why) in UNSUPPORTED.items():
        value = config.get(field)
        if not any(value == v and type(value) is type(v) for v in off) and value is not None:
            raise PeftFormatError(f"{cfg_file}: {field}={value!r} is not supported ({why}); "
                                  "lora_jax imports plain LoRA")
    init = config.get("init_lora_weights", True)
    if not any(init == v and type(init) is type(v) for v in PLAIN_INITS):
        raise PeftFormatError(f"{cfg_file}: init_lora_weights={init!r} changes the base weights "
                              "as well as A and B; convert the adapter to plain LoRA with PEFT "
                              "(path_initial_model_for_weight_conversion) first")
    if not isinstance(config.get("target_modules"), str | list):
        raise PeftFormatError(f"{cfg_file}: target_modules {config.get('target_modules')!r} is "
                              "neither a list of module names nor a regex")
    dora = config.get("use_dora", False)
    if not isinstance(dora, bool | None):
        raise PeftFormatError(f"{cfg_file}: use_dora={dora!r} is not true or false")
    alpha = config.get("lora_alpha")
    if isinstance(alpha, int | float) and not isinstance(alpha, bool):
        alpha = float(alpha)  # PEFT writes 16 or 16.0; LoRAConfig.alpha is a float
    try:
        return LoRAConfig(rank=config.get("r"), alpha=alpha,
                          dropout=float(config.get("lora_dropout") or 0.0),
                          rslora=bool(config.get("use_rslora", False)), dora=bool(dora))
    except (TypeError, ValueError) as e:
        raise PeftFormatError(f"{cfg_file}: {e}") from None


def read_peft_tensors(weights: Path) -> dict[str, np.ndarray]:
    """All tensors as float32 numpy arrays (float16/bfloat16 are widened, exactly)."""
    out = {}
    try:
        with safe_open(str(weights), framework="numpy") as f:
            kinds = {k: f.get_slice(k).get_dtype() for k in f.keys()}
            for k, kind in kinds.items():
                if kind not in ("F32", "F16", "BF16"):
                    raise PeftFormatError(f"{weights}: tensor {k} has dtype {kind}; expected "
                                          "float32, float16 or bfloat16")
                if kind != "BF16":
                    out[k] = f.get_tensor(k).astype(np.float32, copy=False)
        if any(kind == "BF16" for kind in kinds.values()):  # numpy has no bfloat16: via jax
            with safe_open(str(weights), framework="flax") as f:
                for k in (k for k, kind in kinds.items() if kind == "BF16"):
                    out[k] = np.asarray(f.get_tensor(k).astype(jnp.float32))
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, PeftFormatError):
            raise
        raise PeftFormatError(f"{weights}: not a readable safetensors file ({e})") from None
    return out


def import_peft(peft_dir: str | os.PathLike, base: str | os.PathLike | Pretrained | None = None
                ) -> PeftImport:
    """Read a PEFT LoRA directory (from ``get_peft_model(...).save_pretrained``) onto ``base``.

    ``base`` is ``minilm``, a Hugging Face model directory or a loaded ``Pretrained``; by
    default the config's ``base_model_name_or_path`` (it must then name one of those: nothing is
    downloaded). Every tensor must be a LoRA A/B of a layer lora_jax adapts, or the classifier
    head, with the shapes of ``base``; ``target_modules`` must select exactly the layers the
    file holds adapters for, on every layer of the encoder. Anything else is a
    ``PeftFormatError`` that names the file and the culprit.
    """
    peft_dir = Path(peft_dir)
    config, cfg_file, weights = read_peft_config(peft_dir)
    lora = _lora_config(config, cfg_file)
    tensors = read_peft_tensors(weights)

    if base is None:
        base = config.get("base_model_name_or_path")
        if not base:
            raise PeftFormatError(f"{cfg_file}: names no base_model_name_or_path; give the base "
                                  "model (--model)")
    base_name = base.name if isinstance(base, Pretrained) else str(base)
    try:
        base_cfg = base.config if isinstance(base, Pretrained) else load_config(base)
    except CheckpointError as e:
        raise PeftFormatError(f"{peft_dir}: cannot use base model {base_name!r} ({e}); lora_jax "
                              "never downloads, so give a local base model (--model)") from None
    mt = base_cfg.model_type

    ours: dict[str, np.ndarray] = {}
    roles: set[str] = set()
    for key, x in tensors.items():
        mapped = from_peft_key(key)
        if mapped is None:
            raise PeftFormatError(
                f"{weights}: unexpected tensor {key} (not a lora_A/lora_B weight, a DoRA "
                f"{MAGNITUDE} or the classifier head; LoRA biases, embedding adapters and other "
                "modules_to_save are not supported)")
        path, transpose = mapped
        if path.startswith(f"{LORA}/"):
            module = _module_of(path)
            role = role_of(module, mt)
            if role is None:
                raise PeftFormatError(
                    f"{weights}: tensor {key} adapts {module}, which is not a layer lora_jax "
                    f"adapts in this {mt} base ({base_name}): "
                    f"{mt}.encoder.layer.N.{{{', '.join(ROLE_MODULES.values())}}}"
                    f"{f' and {mt}.{POOLER_MODULE}' if mt == 'bert' else ''}")
            roles.add(role)
        ours[path] = np.ascontiguousarray(x.T if transpose else x)
    if not roles:
        raise PeftFormatError(f"{weights}: holds no LoRA weights")
    lora = dataclasses.replace(lora, targets=tuple(t for t in LORA_TARGETS if t in roles))

    head_out = f"params/classifier/{'out_proj/' if mt == 'roberta' else ''}kernel"
    if head_out not in ours:
        raise PeftFormatError(f"{weights}: no classifier head {to_peft_key(head_out)[0]} (PEFT "
                              "saves it for task_type SEQ_CLS via modules_to_save)")
    num_labels = ours[head_out].shape[-1]
    cfg = base_cfg.replace(num_labels=num_labels)
    expected = _adapter_template(cfg, lora)
    missing = sorted(to_peft_key(p)[0] for p in set(expected) - set(ours))
    extra = sorted(to_peft_key(p)[0] for p in set(ours) - set(expected))
    if missing or extra:
        hint = (" (adapters on some layers only are not supported)"
                if any(".lora_" in k for k in missing) and not lora.dora else "")
        if any(MAGNITUDE in k for k in missing + extra):
            hint = (f" (use_dora={lora.dora} in {CONFIG_FILE}: a DoRA adapter has a {MAGNITUDE} "
                    "per adapted layer, a plain one none)")
        raise PeftFormatError(f"{weights}: tensors do not match the {mt} base {base_name} with "
                              f"LoRA on {list(lora.targets)}: missing {missing[:4]}, "
                              f"unexpected {extra[:4]}{hint}")
    for path, want in expected.items():
        got = ours[path]
        if got.shape != tuple(want.shape):
            key, transpose = to_peft_key(path)
            shape = got.T.shape if transpose else got.shape
            want_shape = tuple(want.shape)[::-1] if transpose else tuple(want.shape)
            raise PeftFormatError(f"{weights}: tensor {key} has shape {shape}, expected "
                                  f"{want_shape} (r={lora.rank} from {CONFIG_FILE}, and the "
                                  f"base's layer sizes)")
    selected = {m for m in _dense_modules(cfg) if peft_selects(config, m)}
    held = {_module_of(p) for p in ours if p.startswith(f"{LORA}/")}
    if selected != held:
        raise PeftFormatError(
            f"{cfg_file}: target_modules {config['target_modules']!r} selects "
            f"{sorted(selected - held)[:3]} without weights in {WEIGHTS_FILE}, and it holds "
            f"weights for {sorted(held - selected)[:3]} that it does not select")

    pre = base if isinstance(base, Pretrained) else load_pretrained(base, num_labels=num_labels)
    if pre.config != cfg:
        raise PeftFormatError(f"{peft_dir}: the base given has {pre.config.num_labels} labels, "
                              f"the adapter's head {num_labels}")
    variables = unflatten({p: jnp.asarray(x) for p, x in ours.items()})
    return PeftImport(lora=lora, variables=variables, pretrained=pre, base=base_name,
                      peft_config=config, source=peft_dir)


def save_imported(imported: PeftImport, path: str | os.PathLike, *, task: str | None = None,
                  overwrite: bool = False) -> Path:
    """Write an imported PEFT adapter as a lora_jax adapter file, for ``lora-jax eval`` and
    ``merge`` (and ``restore``). ``task`` (a GLUE task) must fit the head's size; without it,
    ``eval`` needs ``--task``. An existing file is replaced only with ``overwrite``, and never
    one inside the PEFT directory or the base model's (``files.check_output_file``)."""
    check_output_file(path, overwrite=overwrite,
                      reads={"the PEFT adapter": imported.source,
                             "the base model": imported.pretrained.path})
    n = imported.pretrained.config.num_labels
    if task is not None:
        t = get_task(task)
        if t.num_labels != n:
            raise ValueError(f"task {t.name} needs {t.num_labels} outputs, the PEFT adapter's "
                             f"head in {imported.source} has {n}")
        task, labels, names = t.name, list(t.labels or []), list(t.label_names)
    else:
        labels = [] if n == 1 else [f"LABEL_{i}" for i in range(n)]
        names = [f"LABEL_{i}" for i in range(n)]
    lora = imported.lora
    method = peft_method(lora.dora).name
    train_config = {"method": method, "model": imported.base, "rank": lora.rank,
                    "alpha": lora.alpha, "targets": list(lora.targets),
                    "lora_dropout": lora.dropout, "rslora": lora.rslora}
    if task is not None:
        train_config["task"] = task
    meta = {
        "task": task, "labels": labels, "label_names": names, "base_model": imported.base,
        "base_fingerprint": imported.pretrained.fingerprint,
        "model_config": asdict(imported.pretrained.config), "train_config": train_config,
        "imported_from": {"format": "peft", "path": str(imported.source),
                          "peft_version": imported.peft_config.get("peft_version"),
                          "base_model_name_or_path":
                              imported.peft_config.get("base_model_name_or_path")},
    }
    return save_adapter(path, imported.variables, method, meta)
