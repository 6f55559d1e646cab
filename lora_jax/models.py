"""A minimal BERT-family encoder (BERT and RoBERTa) with a sequence-classification head.

Module and parameter names follow Hugging Face's PyTorch checkpoints one to one, so a
checkpoint key such as ``encoder.layer.0.attention.self.query.weight`` is the Flax path
``bert/encoder/layer/0/attention/self/query/kernel`` (transposed). Every dense layer is a
``LoRADense`` with a role name; ``LoRAConfig.targets`` picks which roles carry adapters.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.lora import LORA, LoRAConfig, LoRADense
from lora_jax.quant import FORMATS
from lora_jax.validate import ConfigError, choice, integer, real

# Roles of the dense layers inside each transformer block, in order of use; then BERT's pooler
# (one dense layer after the blocks; RoBERTa has none), which PEFT's common recipe
# target_modules=["query", "key", "value", "dense"] adapts too.
BLOCK_TARGETS = ("query", "key", "value", "attention_output", "intermediate", "output")
LORA_TARGETS = (*BLOCK_TARGETS, "pooler")
# Each block role's module inside ``<model_type>.encoder.layer.<i>``, dotted as Hugging Face
# names it (our ``'params'`` tree uses the same names, with ``/``).
ROLE_MODULES = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_output": "attention.output.dense",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
}
POOLER_MODULE = "pooler.dense"  # BERT's pooler, inside ``<model_type>``: role "pooler"
TARGET_PRESETS = {
    "qv": ("query", "value"),
    "attention": ("query", "key", "value", "attention_output"),
    "all": BLOCK_TARGETS,  # every matrix in the blocks, as the paper's "all"
}
MODEL_TYPES = ("bert", "roberta")
# Mixed precision: activations and matmuls in ``dtype``; parameters, optimizer state, LayerNorm
# statistics, softmax and the loss in float32. bfloat16 pays off on GPUs and TPUs, not on a
# small CPU (XLA's CPU backend emulates most bf16 arithmetic).
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclass(frozen=True)
class ModelConfig:
    """Shape and behaviour of the encoder; field names follow Hugging Face's ``config.json``.

    ``num_labels == 1`` makes the head a regressor (STS-B); otherwise a classifier.
    RoBERTa differs from BERT in its position ids (they start at ``pad_token_id + 1``) and in
    its head (dense + tanh + out_proj on the first token, no pooler).
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0
    model_type: str = "bert"
    num_labels: int = 2
    dtype: str = "float32"  # compute dtype (activations, matmuls); parameters stay float32
    quantize: str | None = None  # how the encoder's frozen dense kernels are stored (QLoRA)

    def __post_init__(self) -> None:
        """Types first, then values, each error naming the field (``validate``)."""
        own = "ModelConfig"
        for f in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "max_position_embeddings", "type_vocab_size",
                  "num_labels"):
            integer(own, f, getattr(self, f), minimum=1)
        integer(own, "pad_token_id", self.pad_token_id, minimum=0)
        object.__setattr__(self, "layer_norm_eps",
                           real(own, "layer_norm_eps", self.layer_norm_eps, low=0, low_open=True))
        for f in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            object.__setattr__(self, f, real(own, f, getattr(self, f), low=0, high=1))
        choice(own, "model_type", self.model_type, MODEL_TYPES)
        choice(own, "dtype", self.dtype, tuple(COMPUTE_DTYPES))
        if self.quantize is not None:
            choice(own, "quantize", self.quantize, FORMATS)
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"ModelConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @property
    def compute_dtype(self):
        return COMPUTE_DTYPES[self.dtype]

    @property
    def position_offset(self) -> int:
        """First position id of a real token: 0 for BERT, pad_token_id + 1 for RoBERTa."""
        return self.pad_token_id + 1 if self.model_type == "roberta" else 0

    @property
    def max_positions(self) -> int:
        """The longest input (in tokens) the position table covers."""
        return self.max_position_embeddings - self.position_offset

    @classmethod
    def tiny(cls, **changes) -> ModelConfig:
        """A 2-layer, d=32 model for fast tests."""
        base = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=64)
        return cls(**{**base, **changes})

    @classmethod
    def roberta_base(cls, **changes) -> ModelConfig:
        """RoBERTa-base's shape (125M parameters), for parameter counts and benchmarks."""
        base = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                    num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514,
                    type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1,
                    model_type="roberta")
        return cls(**{**base, **changes})


def check_targets(lora: LoRAConfig | None, model_type: str | None = None) -> None:
    """Every LoRA target must name a dense-layer role of this encoder (of ``model_type``'s,
    when given: RoBERTa has no pooler)."""
    if lora is None:
        return
    bad = [t for t in lora.targets if t not in LORA_TARGETS]
    if bad:
        raise ConfigError(
            f"LoRAConfig.targets: unknown layer name(s) {bad}; valid names are {LORA_TARGETS}"
        )
    if model_type == "roberta" and "pooler" in lora.targets:
        raise ConfigError("LoRAConfig.targets: 'pooler' is BERT's pooler layer; RoBERTa "
                          "classifies from its first token without one")


class Embeddings(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool):
        cfg = self.cfg
        b, t = input_ids.shape
        if cfg.model_type == "roberta":  # ids count real tokens from pad_token_id + 1
            real = (input_ids != cfg.pad_token_id).astype(jnp.int32)
            position_ids = jnp.cumsum(real, axis=1) * real + cfg.pad_token_id  # (B, T)
        else:
            position_ids = jnp.broadcast_to(jnp.arange(t), (b, t))  # (B, T)
        x = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings")(input_ids)
        x += nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                      name="position_embeddings")(position_ids)
        x += nn.Embed(cfg.type_vocab_size, cfg.hidden_size,
                      name="token_type_embeddings")(token_type_ids)  # (B, T, D)
        x = nn.LayerNorm(cfg.layer_norm_eps, dtype=cfg.compute_dtype, name="LayerNorm")(x)
        return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


def gelu(x):
    """Exact GELU, ``x * Phi(x)``, with the normal CDF written through ``erf`` as BERT's
    reference code writes it (Hugging Face's ``GELUActivation``: ``x * 0.5 * (1 + erf(x /
    sqrt(2)))``). ``jax.nn.gelu(x, approximate=False)`` is the same function written through
    ``erfc``, which XLA's CPU backend expands into two rational branches and an ``exp``; this
    form made the MiniLM train step faster (``benchmarks/profile_step.py``; README "Speed
    notes"). The two agree within 1.1e-6 (absolute) of the float64 GELU."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * (1 / math.sqrt(2))))


@jax.custom_jvp
def softmax(x):
    """Softmax over the last axis, ``jax.nn.softmax``'s forward pass op for op, with the
    derivative written in terms of its output alone: ``dy = y * (dx - sum(y * dx))``.

    Under JAX's default (``jax_softmax_custom_jvp=False``) ``jax.nn.softmax`` is differentiated
    through its division, so the backward pass keeps ``exp(x - max)`` and ``1 / sum`` as well as
    ``y``, and XLA's CPU backend writes ``1 / sum`` out at the full (B, H, T, T) size for the
    fusion that reads it. Here the backward pass reads ``y`` only, as PyTorch's softmax does,
    and MiniLM's train step at batch 32 took 0.90 (LoRA) and 0.96 (full) of the time at T = 64,
    within noise at T = 32 (``benchmarks/versions.py``; README "Speed notes"). The rule is the
    one JAX itself uses when that flag is on; the forward values are ``jax.nn.softmax``'s, bit
    for bit."""
    e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


@softmax.defjvp
def _softmax_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = softmax(x)
    return y, y * (dx - jnp.sum(y * dx, axis=-1, keepdims=True))


class SelfAttention(nn.Module):
    cfg: ModelConfig
    lora: LoRAConfig | None

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool):
        cfg = self.cfg
        b, t, d = x.shape
        h = cfg.num_attention_heads
        hd = d // h

        def proj(role):
            y = LoRADense(d, role, self.lora, name=role, quant=cfg.quantize)(
                x, deterministic)  # (B, T, D)
            return y.reshape(b, t, h, hd)  # (B, T, H, Dh)

        q, k, v = proj("query"), proj("key"), proj("value")
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(hd).astype(x.dtype)  # (B,H,T,T)
        scores = scores + mask_bias  # mask_bias: (B, 1, 1, T), 0 or a large negative number
        probs = softmax(scores.astype(jnp.float32)).astype(x.dtype)
        probs = nn.Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=deterministic)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v)  # (B, T, H, Dh)
        return ctx.reshape(b, t, d)  # (B, T, D)


ADAPTERS = "adapters"  # variable collection of the Houlsby bottleneck adapters (a baseline)


class Bottleneck(nn.Module):
    """Houlsby et al. (2019) adapter: ``h + up(gelu(down(h)))``, a baseline the LoRA paper
    compares against. ``up`` starts at zero, so the adapter starts as the identity. Its weights
    live in the ``'adapters'`` collection and, unlike LoRA, cannot be merged away: they add
    layers, and latency, at inference."""

    size: int

    @nn.compact
    def __call__(self, h):
        d = h.shape[-1]
        init = nn.initializers.normal(0.02)
        down = self.variable(ADAPTERS, "down",
                             lambda: init(self.make_rng(ADAPTERS), (d, self.size)))
        up = self.variable(ADAPTERS, "up", jnp.zeros, (self.size, d), jnp.float32)
        down_b = self.variable(ADAPTERS, "down_bias", jnp.zeros, (self.size,), jnp.float32)
        up_b = self.variable(ADAPTERS, "up_bias", jnp.zeros, (d,), jnp.float32)
        dt = h.dtype  # weights stay float32; compute in the activations' dtype
        z = gelu(h @ down.value.astype(dt) + down_b.value.astype(dt))  # (B, T, size)
        return h + z @ up.value.astype(dt) + up_b.value.astype(dt)  # (B, T, D)


class DenseLayerNorm(nn.Module):
    """dense -> dropout -> [adapter] -> residual add -> LayerNorm (BERT's post-LN sub-block).

    With ``adapter_size`` set and the ``'adapters'`` collection present (or being created), a
    ``Bottleneck`` adapter sits after the dense layer, where Houlsby et al. put it.
    """

    cfg: ModelConfig
    lora: LoRAConfig | None
    role: str
    adapter_size: int | None = None

    @nn.compact
    def __call__(self, x, residual, deterministic: bool):
        cfg = self.cfg
        y = LoRADense(cfg.hidden_size, self.role, self.lora, name="dense",
                      quant=cfg.quantize)(x, deterministic)
        y = nn.Dropout(cfg.hidden_dropout_prob)(y, deterministic=deterministic)
        if self.adapter_size and (self.is_mutable_collection(ADAPTERS)
                                  or self.has_variable(ADAPTERS, "adapter")):
            y = Bottleneck(self.adapter_size, name="adapter")(y)
        return nn.LayerNorm(cfg.layer_norm_eps, dtype=cfg.compute_dtype, name="LayerNorm")(
            y + residual)


class Attention(nn.Module):
    cfg: ModelConfig
    lora: LoRAConfig | None
    adapter_size: int | None = None

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool):
        ctx = SelfAttention(self.cfg, self.lora, name="self")(x, mask_bias, deterministic)
        return DenseLayerNorm(self.cfg, self.lora, "attention_output", self.adapter_size,
                              name="output")(ctx, x, deterministic)


class Intermediate(nn.Module):
    cfg: ModelConfig
    lora: LoRAConfig | None

    @nn.compact
    def __call__(self, x, deterministic: bool):
        y = LoRADense(self.cfg.intermediate_size, "intermediate", self.lora, name="dense",
                      quant=self.cfg.quantize)(
            x, deterministic)  # (B, T, F)
        return gelu(y)


class Layer(nn.Module):
    cfg: ModelConfig
    lora: LoRAConfig | None
    adapter_size: int | None = None

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool):
        x = Attention(self.cfg, self.lora, self.adapter_size, name="attention")(
            x, mask_bias, deterministic)
        y = Intermediate(self.cfg, self.lora, name="intermediate")(x, deterministic)
        return DenseLayerNorm(self.cfg, self.lora, "output", self.adapter_size, name="output")(
            y, x, deterministic)


class Blocks(nn.Module):
    """HF's ``layer`` list: blocks named ``0``, ``1``, ... so paths read ``layer/0/...``."""

    cfg: ModelConfig
    lora: LoRAConfig | None
    adapter_size: int | None = None

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool):
        for i in range(self.cfg.num_hidden_layers):
            x = Layer(self.cfg, self.lora, self.adapter_size, name=str(i))(
                x, mask_bias, deterministic)
        return x


class LayerStack(nn.Module):
    """HF's ``encoder`` module (it only holds ``layer``)."""

    cfg: ModelConfig
    lora: LoRAConfig | None
    adapter_size: int | None = None

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool):
        return Blocks(self.cfg, self.lora, self.adapter_size, name="layer")(
            x, mask_bias, deterministic)


class Pooler(nn.Module):
    """BERT's pooler: tanh(dense(first token)). Pretrained and frozen; LoRA adapts it only
    when ``pooler`` is a target."""

    cfg: ModelConfig
    lora: LoRAConfig | None = None

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        dense = LoRADense(self.cfg.hidden_size, "pooler", self.lora, name="dense",
                          quant=self.cfg.quantize)
        return jnp.tanh(dense(x[:, 0], deterministic))  # (B, D)


class Encoder(nn.Module):
    """Embeddings + transformer blocks (+ BERT's pooler): returns (hidden states, pooled).

    ``pooled`` is None for RoBERTa, whose checkpoints carry no trained pooler.
    """

    cfg: ModelConfig
    lora: LoRAConfig | None = None
    adapter_size: int | None = None

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, attention_mask=None,
                 deterministic: bool = True):
        cfg = self.cfg
        check_targets(self.lora, cfg.model_type)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        x = Embeddings(cfg, name="embeddings")(input_ids, token_type_ids, deterministic)
        keep = attention_mask[:, None, None, :] > 0  # (B, 1, 1, T)
        mask_bias = jnp.where(keep, 0.0, jnp.finfo(x.dtype).min).astype(x.dtype)
        x = LayerStack(cfg, self.lora, self.adapter_size, name="encoder")(
            x, mask_bias, deterministic)  # (B, T, D)
        pooled = (None if cfg.model_type == "roberta"
                  else Pooler(cfg, self.lora, name="pooler")(x, deterministic))
        return x, pooled


class RobertaHead(nn.Module):
    """RoBERTa's classification head: dense + tanh + out_proj on the first token (<s>)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, deterministic: bool):
        cfg = self.cfg
        h = nn.Dropout(cfg.hidden_dropout_prob)(x[:, 0], deterministic=deterministic)
        h = jnp.tanh(LoRADense(cfg.hidden_size, "head", name="dense")(h))
        h = nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
        return LoRADense(cfg.num_labels, "head", name="out_proj")(h)


class SequenceClassifier(nn.Module):
    """Encoder + task head, named like HF's ``*ForSequenceClassification``.

    Returns logits (B, num_labels); with ``num_labels == 1`` the single column is a regression
    score. The head (``classifier``) is new for every task and always trained.
    """

    cfg: ModelConfig
    lora: LoRAConfig | None = None
    adapter_size: int | None = None

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, attention_mask=None,
                 deterministic: bool = True):
        cfg = self.cfg
        x, pooled = Encoder(cfg, self.lora, self.adapter_size, name=cfg.model_type)(
            input_ids, token_type_ids, attention_mask, deterministic)
        if cfg.model_type == "roberta":
            return RobertaHead(cfg, name="classifier")(x, deterministic)
        h = nn.Dropout(cfg.hidden_dropout_prob)(pooled, deterministic=deterministic)
        return LoRADense(cfg.num_labels, "head", name="classifier")(h)  # (B, num_labels)


def init_head(cfg: ModelConfig, rng: jax.Array) -> dict:
    """Fresh ``classifier`` parameters for a task, from an explicit key (no encoder init)."""
    if cfg.model_type == "roberta":
        head, x = RobertaHead(cfg), jnp.zeros((1, 1, cfg.hidden_size))
        return head.init(rng, x, deterministic=True)["params"]
    head = LoRADense(cfg.num_labels, "head")
    return head.init(rng, jnp.zeros((1, cfg.hidden_size)))["params"]


def start_head_at(params: dict, cfg: ModelConfig, value: float) -> dict:
    """``params`` with the head's output bias set to ``value`` (a copy; nothing else changes).

    For a regression task, start the fresh head at the mean training label. With a zero bias,
    STS-B's labels (0-5, mean 2.7) leave a large constant error; AdamW moves every head weight by
    about the learning rate per step in the sign of that error's gradient, so while the bias
    crawls towards 2.7 the weights learn the mean pooled vector instead of anything that
    correlates with the label. A frozen encoder (LoRA, adapters, head-only) cannot shift the
    pooled features to compensate, and its Pearson stayed near 0 (measured: 0.09 after one epoch
    of LoRA; 0.79 with the bias started at the mean).
    """
    out = "out_proj" if cfg.model_type == "roberta" else None
    head = dict(params["classifier"])
    if out:
        head[out] = {**head[out], "bias": jnp.full_like(head[out]["bias"], value)}
    else:
        head["bias"] = jnp.full_like(head["bias"], value)
    return {**params, "classifier": head}


def layer_dims(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of the dense layer behind each LoRA target role this model has
    (``LORA_TARGETS``; RoBERTa has no pooler)."""
    d, ff = cfg.hidden_size, cfg.intermediate_size
    dims = {"query": (d, d), "key": (d, d), "value": (d, d), "attention_output": (d, d),
            "intermediate": (d, ff), "output": (ff, d)}
    if cfg.model_type == "bert":
        dims["pooler"] = (d, d)
    return dims


def check_rank(lora: LoRAConfig | None, cfg: ModelConfig, name: str = "the model") -> None:
    """LoRA's update ``A @ B`` has rank at most ``min(d_in, d_out)`` of its layer: a larger
    rank only adds parameters. Checked from the config's shapes, before anything is built."""
    if lora is None:
        return
    dims = layer_dims(cfg)
    check_targets(lora, cfg.model_type)
    for target in lora.targets:
        d_in, d_out = dims[target]
        if lora.rank > min(d_in, d_out):
            largest = min(min(dims[t]) for t in lora.targets if t in dims)
            raise ValueError(f"--rank {lora.rank} is larger than the {target} layer of {name} "
                             f"allows: it maps {d_in} -> {d_out} features, so its update has "
                             f"rank at most {min(d_in, d_out)}; use --rank <= {largest}")
        if lora.init == "pissa" and 2 * lora.rank > min(d_in, d_out):
            largest = min(min(dims[t]) for t in lora.targets if t in dims) // 2
            raise ValueError(f"--init pissa with --rank {lora.rank}: the trained adapter is handed "
                             f"out as a plain LoRA of rank {2 * lora.rank}, more than the {target} "
                             f"layer of {name} ({d_in} -> {d_out}) allows; use --rank <= {largest}")


def check_max_length(max_length: int, cfg: ModelConfig, name: str = "the model") -> None:
    """Examples no longer than the model's position table (XLA would clamp the positions
    silently); checked before any data is read."""
    if max_length > cfg.max_positions:
        raise ValueError(f"--max-length {max_length} is longer than the {cfg.max_positions} "
                         f"positions of {name}; use --max-length <= {cfg.max_positions}")


def abstract_variables(cfg: ModelConfig, lora: LoRAConfig | None = None,
                       adapter_size: int | None = None) -> dict:
    """Every variable of the model as shapes only (``jax.eval_shape``: no memory, no compute):
    ``'params'``, and ``'lora'`` / ``'adapters'`` when ``lora`` / ``adapter_size`` is given."""
    model = SequenceClassifier(cfg, lora, adapter_size)
    rngs = {"params": jax.random.key(0), LORA: jax.random.key(1), ADAPTERS: jax.random.key(2)}
    return jax.eval_shape(lambda: model.init(rngs, jnp.zeros((1, 2), jnp.int32)))
