"""GPT-2 (Radford et al. 2019), the decoder the paper adapts in its Section 7 (E2E NLG).

The architecture and the names are Hugging Face's ``GPT2LMHeadModel``: token and position
embeddings, ``n_layer`` pre-LayerNorm blocks (``ln_1`` -> causal self-attention -> residual,
``ln_2`` -> MLP with ``gelu_new`` -> residual), a final ``ln_f``, and logits from the token
embedding matrix itself (tied weights). Hugging Face stores GPT-2's projections as ``Conv1D``
weights of shape ``(in, out)``, which is already Flax's layout: nothing is transposed, and
``transformer.h.0.attn.c_attn.weight`` is ``transformer/h/0/attn/c_attn/kernel``.

Attention computes query, key and value with one fused projection, ``c_attn`` (d -> 3d). LoRA
on it has two forms (``LoRADense.parts``): the paper's, whose ``MergedLinear`` adapts only the
query and value thirds (``targets=("query", "value")``: one A, B each at
``.../c_attn/query`` and ``.../c_attn/value``; the key third's update is exactly zero), and
PEFT's, one A, B on the whole fused layer (``targets=("c_attn",)``).

Generation keeps a key-value cache: the keys and values of every position so far, so each new
token costs one position's forward pass instead of the whole sequence's (``generate``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.lora import FUSED_PARTS, LoRAConfig, LoRADense
from lora_jax.model_dir import CheckpointError, read_json, read_weights
from lora_jax.models import softmax
from lora_jax.optim import apply_trainable, trainable_labels
from lora_jax.pretrained import fingerprint
from lora_jax.trees import flatten, unflatten
from lora_jax.validate import ConfigError, choice, integer, real

# LoRA target roles of GPT-2's layers: the parts of the fused c_attn, c_attn whole, the
# attention's output projection, and the MLP's two layers.
GPT2_TARGETS = (*FUSED_PARTS, "c_attn", "attn_proj", "c_fc", "mlp_proj")
ACTIVATIONS = ("gelu_new",)  # GPT-2's tanh approximation of GELU
# config.json fields that change the computation in ways this implementation does not have
UNSUPPORTED = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
               "reorder_and_upcast_attn": False, "add_cross_attention": False}


@dataclass(frozen=True)
class GPT2Config:
    """Shape of the decoder; field names follow Hugging Face's ``GPT2Config``."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # the MLP's width; None means 4 * n_embd
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1

    def __post_init__(self) -> None:
        own = "GPT2Config"
        for f in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            integer(own, f, getattr(self, f), minimum=1)
        if self.n_inner is not None:
            integer(own, "n_inner", self.n_inner, minimum=1)
        real(own, "layer_norm_epsilon", self.layer_norm_epsilon, low=0, low_open=True)
        for f in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            real(own, f, getattr(self, f), low=0, high=1)
        choice(own, "activation_function", self.activation_function, ACTIVATIONS)
        if self.n_embd % self.n_head:
            raise ConfigError(f"GPT2Config.n_embd={self.n_embd} is not divisible by "
                              f"n_head={self.n_head}")

    @property
    def inner(self) -> int:
        return self.n_inner or 4 * self.n_embd

    def replace(self, **changes) -> GPT2Config:
        return dataclasses.replace(self, **changes)


def check_gpt2_targets(lora: LoRAConfig | None) -> None:
    """Targets must be GPT-2 roles, and c_attn is adapted whole or by parts, not both."""
    if lora is None:
        return
    bad = [t for t in lora.targets if t not in GPT2_TARGETS]
    if bad:
        raise ConfigError(f"LoRAConfig.targets: unknown GPT-2 layer name(s) {bad}; valid names "
                          f"are {GPT2_TARGETS}")
    if "c_attn" in lora.targets and set(FUSED_PARTS) & set(lora.targets):
        raise ConfigError("LoRAConfig.targets: 'c_attn' (the whole fused layer) and its parts "
                          f"{FUSED_PARTS} exclude each other")


def init_cache(cfg: GPT2Config, batch: int, max_length: int) -> dict:
    """An empty key-value cache for ``max_length`` positions: per block, keys and values of
    shape (B, max_length, H, Dh), and ``length``, the number of positions filled."""
    if max_length > cfg.n_positions:
        raise ValueError(f"max_length {max_length} is longer than the model's {cfg.n_positions} "
                         "positions")
    shape = (batch, max_length, cfg.n_head, cfg.n_embd // cfg.n_head)
    return {"length": jnp.zeros((), jnp.int32),
            "layers": [{"k": jnp.zeros(shape), "v": jnp.zeros(shape)} for _ in range(cfg.n_layer)]}


class Attention(nn.Module):
    cfg: GPT2Config
    lora: LoRAConfig | None

    @nn.compact
    def __call__(self, x, cache, length, deterministic: bool):
        cfg = self.cfg
        b, t, d = x.shape
        h, hd = cfg.n_head, d // cfg.n_head
        qkv = LoRADense(3 * d, "c_attn", self.lora, parts=FUSED_PARTS, name="c_attn")(
            x, deterministic)  # (B, T, 3D)
        q, k, v = (z.reshape(b, t, h, hd) for z in jnp.split(qkv, 3, axis=-1))  # (B, T, H, Dh)
        if cache is not None:  # write this call's positions, attend to everything so far
            k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype),
                                             (0, length, 0, 0))  # (B, T_max, H, Dh)
            v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype),
                                             (0, length, 0, 0))
            cache = {"k": k, "v": v}
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(hd).astype(x.dtype)
        # causal: query i (position length + i) sees keys at positions <= length + i
        seen = jnp.arange(k.shape[1])[None, :] <= length + jnp.arange(t)[:, None]  # (T, T_k)
        scores = jnp.where(seen, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        probs = softmax(scores).astype(x.dtype)  # (B, H, T, T_k)
        probs = nn.Dropout(cfg.attn_pdrop)(probs, deterministic=deterministic)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, d)  # (B, T, D)
        y = LoRADense(d, "attn_proj", self.lora, name="c_proj")(ctx, deterministic)
        return nn.Dropout(cfg.resid_pdrop)(y, deterministic=deterministic), cache


class MLP(nn.Module):
    cfg: GPT2Config
    lora: LoRAConfig | None

    @nn.compact
    def __call__(self, x, deterministic: bool):
        cfg = self.cfg
        y = LoRADense(cfg.inner, "c_fc", self.lora, name="c_fc")(x, deterministic)  # (B, T, F)
        y = nn.gelu(y, approximate=True)  # gelu_new
        y = LoRADense(cfg.n_embd, "mlp_proj", self.lora, name="c_proj")(y, deterministic)
        return nn.Dropout(cfg.resid_pdrop)(y, deterministic=deterministic)


class Block(nn.Module):
    cfg: GPT2Config
    lora: LoRAConfig | None

    @nn.compact
    def __call__(self, x, cache, length, deterministic: bool):
        eps = self.cfg.layer_norm_epsilon
        a, cache = Attention(self.cfg, self.lora, name="attn")(
            nn.LayerNorm(eps, name="ln_1")(x), cache, length, deterministic)
        x = x + a
        x = x + MLP(self.cfg, self.lora, name="mlp")(nn.LayerNorm(eps, name="ln_2")(x),
                                                     deterministic)
        return x, cache


class Blocks(nn.Module):
    """HF's ``h`` list: blocks named ``0``, ``1``, ... so paths read ``h/0/...``."""

    cfg: GPT2Config
    lora: LoRAConfig | None

    @nn.compact
    def __call__(self, x, caches, length, deterministic: bool):
        new = []
        for i in range(self.cfg.n_layer):
            x, cache = Block(self.cfg, self.lora, name=str(i))(
                x, None if caches is None else caches[i], length, deterministic)
            new.append(cache)
        return x, new


class Transformer(nn.Module):
    """HF's ``GPT2Model`` (``transformer``): embeddings, blocks ``h/0 ...``, ``ln_f``."""

    cfg: GPT2Config
    lora: LoRAConfig | None

    @nn.compact
    def __call__(self, input_ids, cache, deterministic: bool):
        cfg = self.cfg
        t = input_ids.shape[1]
        length = jnp.zeros((), jnp.int32) if cache is None else cache["length"]
        wte = nn.Embed(cfg.vocab_size, cfg.n_embd, name="wte")
        positions = length + jnp.arange(t)  # (T,)
        x = wte(input_ids) + nn.Embed(cfg.n_positions, cfg.n_embd, name="wpe")(positions)
        x = nn.Dropout(cfg.embd_pdrop)(x, deterministic=deterministic)  # (B, T, D)
        x, layers = Blocks(cfg, self.lora, name="h")(
            x, None if cache is None else cache["layers"], length, deterministic)
        x = nn.LayerNorm(cfg.layer_norm_epsilon, name="ln_f")(x)
        logits = wte.attend(x)  # (B, T, V): the output layer is the embedding matrix (tied)
        if cache is None:
            return logits, None
        return logits, {"length": length + t, "layers": layers}


class GPT2(nn.Module):
    """``GPT2LMHeadModel``: token ids (B, T) -> next-token logits (B, T, vocab).

    With ``cache`` (from ``init_cache``), the ids continue the cached positions and the call
    returns ``(logits, cache)`` with them added.
    """

    cfg: GPT2Config
    lora: LoRAConfig | None = None

    @nn.compact
    def __call__(self, input_ids, cache=None, deterministic: bool = True):
        check_gpt2_targets(self.lora)
        logits, cache_out = Transformer(self.cfg, self.lora, name="transformer")(
            input_ids, cache, deterministic)
        return logits if cache is None else (logits, cache_out)


def lm_loss(logits: jax.Array, input_ids: jax.Array, mask: jax.Array | None = None
            ) -> jax.Array:
    """Causal-LM cross-entropy: position t predicts token t + 1. ``mask`` (B, T) marks the
    real tokens (1) of right-padded rows; a prediction counts when both its input and its
    target are real."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)  # (B, T-1, V)
    target = input_ids[:, 1:]
    nll = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]  # (B, T-1)
    w = jnp.ones_like(nll) if mask is None else (mask[:, 1:] * mask[:, :-1]).astype(nll.dtype)
    return jnp.sum(w * nll) / jnp.maximum(w.sum(), 1.0)


@partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(3, 4))
def lm_train_step(model: GPT2, tx, method: str, variables: dict, opt_state, ids: jax.Array,
                  mask: jax.Array, rng: jax.Array) -> tuple[dict, object, jax.Array]:
    """One optimizer step of the causal-LM loss on a batch of right-padded ids (B, T) with
    their mask; ``tx`` comes from ``make_optimizer`` under ``method``'s labels, so frozen
    leaves come back bit-identical. Returns ``(variables, opt_state, loss)``; the input
    buffers are donated."""
    labels = trainable_labels(variables, method)  # static: depends on paths only

    def loss_fn(v):
        logits = model.apply(v, ids, deterministic=False, rngs={"dropout": rng})
        return lm_loss(logits, ids, mask)

    loss, grads = jax.value_and_grad(loss_fn)(variables)
    updates, opt_state = tx.update(grads, opt_state, variables)
    return apply_trainable(variables, updates, labels), opt_state, loss


def _pick(logits: jax.Array, key: jax.Array, top_k: int | None, temperature: float
          ) -> jax.Array:
    """The next token from last-position logits (B, V): argmax, or a sample from the top k."""
    if top_k is None:
        return jnp.argmax(logits, axis=-1)
    top, idx = jax.lax.top_k(logits / temperature, top_k)  # (B, k)
    choice_ = jax.random.categorical(key, top, axis=-1)  # (B,)
    return jnp.take_along_axis(idx, choice_[:, None], axis=-1)[:, 0]


@partial(jax.jit, static_argnums=(0, 4, 5))
def _cached_step(model, variables, ids, cache, top_k, temperature, key):
    logits, cache = model.apply(variables, ids, cache)
    return _pick(logits[:, -1], key, top_k, temperature), cache


@partial(jax.jit, static_argnums=(0, 4, 5))
def _full_step(model, variables, ids, last, top_k, temperature, key):
    # ids (B, T_total) padded after position ``last``: causal attention means the padding
    # changes nothing before it, and one compiled shape serves every step
    logits = jax.lax.dynamic_index_in_dim(model.apply(variables, ids), last, axis=1,
                                          keepdims=False)  # (B, V)
    return _pick(logits, key, top_k, temperature)


def generate(model: GPT2, variables: dict, prompt: jax.Array, max_new_tokens: int, *,
             top_k: int | None = None, temperature: float = 1.0,
             rng: jax.Array | None = None, use_cache: bool = True) -> jax.Array:
    """``max_new_tokens`` tokens (B, N) after ``prompt`` (B, T0): greedy, or top-k sampling
    with ``rng`` (step i draws with ``fold_in(rng, i)``). With ``use_cache`` the prompt runs
    once and each new token one position; without it every step reruns the whole sequence
    (the slow way, for checking: the tokens are the same)."""
    b, t0 = prompt.shape
    total = t0 + max_new_tokens
    if total > model.cfg.n_positions:
        raise ValueError(f"prompt ({t0}) + max_new_tokens ({max_new_tokens}) exceeds the "
                         f"model's {model.cfg.n_positions} positions")
    if top_k is not None and rng is None:
        raise ValueError("top-k sampling needs rng")
    rng = jax.random.key(0) if rng is None else rng
    out = []
    if use_cache:
        cache = init_cache(model.cfg, b, total)
        ids = prompt
        for i in range(max_new_tokens):
            nxt, cache = _cached_step(model, variables, ids, cache, top_k, temperature,
                                      jax.random.fold_in(rng, i))
            out.append(nxt)
            ids = nxt[:, None]  # (B, 1): only the new position runs next
    else:
        ids = jnp.zeros((b, total), prompt.dtype).at[:, :t0].set(prompt)
        for i in range(max_new_tokens):
            nxt = _full_step(model, variables, ids, t0 + i - 1, top_k, temperature,
                             jax.random.fold_in(rng, i))
            out.append(nxt)
            ids = ids.at[:, t0 + i].set(nxt)
    return jnp.stack(out, axis=1)  # (B, N)


# ---------------------------------------------------------------------------------------------
# Hugging Face GPT-2 directories in.

CONFIG_FIELDS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner",
                 "layer_norm_epsilon", "activation_function", "resid_pdrop", "embd_pdrop",
                 "attn_pdrop")
# Constant buffers some GPT-2 checkpoints carry (the causal mask); checked, not parameters.
BUFFERS = (r"^h\.\d+\.attn\.bias$", r"^h\.\d+\.attn\.masked_bias$")


@dataclass
class PretrainedGPT2:
    config: GPT2Config
    params: dict
    path: Path
    fingerprint: str

    def model(self, lora: LoRAConfig | None = None) -> GPT2:
        return GPT2(self.config, lora)


def gpt2_config_from_hf(hf: dict, source: str = "config.json") -> GPT2Config:
    """Our config from a Hugging Face ``config.json`` dict; features we do not implement are
    refused by name rather than computed differently."""
    if hf.get("model_type") != "gpt2":
        raise CheckpointError(f"{source}: model_type is {hf.get('model_type')!r}, not 'gpt2'")
    for key, want in UNSUPPORTED.items():
        if hf.get(key, want) != want:
            raise CheckpointError(f"{source}: {key}={hf[key]!r} is not supported (only {want})")
    try:
        return GPT2Config(**{k: hf[k] for k in CONFIG_FIELDS if k in hf})
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{source}: {e}") from None


def hf_key_to_path(key: str) -> str:
    """``transformer.h.0.ln_1.weight`` -> ``transformer/h/0/ln_1/scale`` (the same without the
    ``transformer.`` prefix, as the original ``gpt2`` files store it)."""
    *module, leaf = key.removeprefix("transformer.").split(".")
    if module and module[-1] in ("wte", "wpe"):
        leaf = {"weight": "embedding"}.get(leaf, leaf)
    elif module and module[-1].startswith("ln_"):
        leaf = {"weight": "scale"}.get(leaf, leaf)
    else:
        leaf = {"weight": "kernel"}.get(leaf, leaf)
    return "/".join(["transformer", *module, leaf])


def path_to_hf_key(path: str) -> str:
    """The inverse of ``hf_key_to_path``, with ``GPT2LMHeadModel``'s ``transformer.`` prefix."""
    module, leaf = path.rsplit("/", 1)
    leaf = {"embedding": "weight", "scale": "weight", "kernel": "weight"}.get(leaf, leaf)
    return f"{module.replace('/', '.')}.{leaf}"


def load_gpt2(path: str | os.PathLike) -> PretrainedGPT2:
    """A Hugging Face GPT-2 directory (``config.json``, ``model.safetensors``) into our
    ``'params'`` tree, exactly: every tensor maps to one parameter of the right shape (no
    transpose: ``Conv1D`` is already ``(in, out)``), a missing, unknown or mis-shaped one is an
    error naming it. ``lm_head.weight``, when a file has it, must equal the token embeddings
    (the weights are tied)."""
    model_dir = Path(path)
    weights = model_dir / "model.safetensors"
    tensors = read_weights(model_dir, "a Hugging Face GPT-2 directory")
    cfg = gpt2_config_from_hf(read_json(model_dir / "config.json"),
                              str(model_dir / "config.json"))
    abstract = jax.eval_shape(lambda: GPT2(cfg).init(jax.random.key(0),
                                                     jnp.zeros((1, 1), jnp.int32)))
    expected = {p: tuple(s.shape) for p, s in flatten(abstract["params"]).items()}
    params, unknown, mismatched, head = {}, [], [], None
    for key, value in tensors.items():
        short = key.removeprefix("transformer.")
        if any(re.search(p, short) for p in BUFFERS):
            _check_causal_buffer(key, value, weights)
            continue
        if key == "lm_head.weight":
            head = value
            continue
        p = hf_key_to_path(key)
        if p not in expected:
            unknown.append(key)
        elif tuple(value.shape) != expected[p]:
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {expected[p]}")
        elif p in params:
            raise CheckpointError(f"{weights}: two tensors map to {p} (one is {key})")
        else:
            params[p] = np.ascontiguousarray(value, dtype=np.float32)
    if unknown:
        raise CheckpointError(f"{weights}: unexpected tensor(s) {sorted(unknown)}")
    if mismatched:
        raise CheckpointError(f"{weights}: shape mismatch: {'; '.join(mismatched)}")
    missing = sorted(set(expected) - set(params))
    if missing:
        raise CheckpointError(f"{weights}: missing tensor(s) for {missing}")
    wte = params["transformer/wte/embedding"]
    if head is not None and not np.array_equal(head, wte):
        raise CheckpointError(f"{weights}: lm_head.weight differs from transformer.wte.weight; "
                              "GPT-2's output layer is tied to its token embeddings")
    tree = jax.tree.map(jnp.asarray, unflatten(params))
    return PretrainedGPT2(config=cfg, params=tree, path=model_dir,
                          fingerprint=fingerprint(tree))


def _check_causal_buffer(key: str, value: np.ndarray, source: Path) -> None:
    """Old GPT-2 files store the causal mask (``attn.bias``, lower-triangular ones) and a
    constant (``attn.masked_bias``): harmless when they are what they should be."""
    if key.endswith("masked_bias"):
        return
    tri = np.tril(np.ones(value.shape[-2:], dtype=bool))
    if not np.array_equal(value.reshape(value.shape[-2:]).astype(bool), tri):
        raise CheckpointError(f"{source}: {key} is not a causal (lower-triangular) mask")
