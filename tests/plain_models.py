"""Models written in plain Flax linen, with no thought of LoRA: what ``lora_jax.inject`` is for.

* ``PlainBert``: our BERT encoder and classifier (``lora_jax.models``, BERT only, no adapters,
  no quantization) rebuilt with ``nn.Dense`` everywhere. Its ``'params'`` tree is the same
  (same paths, same shapes), so pretrained weights load into it unchanged.
* ``SmallCNN``: two convolutions and a dense classifier.
* ``ViTBlock``: a pre-LN transformer block as vision transformers write it, with ``DenseGeneral``
  projections to heads and an ``Einsum`` output projection, over patch embeddings from a
  strided ``Conv``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.models import ModelConfig, gelu


class PlainSelfAttention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, mask_bias):
        b, t, d = x.shape
        h = self.cfg.num_attention_heads
        q, k, v = (nn.Dense(d, name=n)(x).reshape(b, t, h, d // h)
                   for n in ("query", "key", "value"))  # (B, T, H, Dh)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(d // h).astype(x.dtype)
        probs = jax.nn.softmax((scores + mask_bias).astype(jnp.float32), axis=-1)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, d)


class PlainDenseNorm(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, residual):
        y = nn.Dense(self.cfg.hidden_size, name="dense")(x)
        return nn.LayerNorm(self.cfg.layer_norm_eps, name="LayerNorm")(y + residual)


class PlainAttention(nn.Module):  # HF's attention/{self, output}
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, mask_bias):
        ctx = PlainSelfAttention(self.cfg, name="self")(x, mask_bias)
        return PlainDenseNorm(self.cfg, name="output")(ctx, x)


class PlainIntermediate(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        return gelu(nn.Dense(self.cfg.intermediate_size, name="dense")(x))


class PlainLayer(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, mask_bias):
        x = PlainAttention(self.cfg, name="attention")(x, mask_bias)
        y = PlainIntermediate(self.cfg, name="intermediate")(x)
        return PlainDenseNorm(self.cfg, name="output")(y, x)


class PlainEmbeddings(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, ids, types):
        cfg = self.cfg
        pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)  # (B, T)
        x = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings")(ids)
        x += nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                      name="position_embeddings")(pos)
        x += nn.Embed(cfg.type_vocab_size, cfg.hidden_size, name="token_type_embeddings")(types)
        return nn.LayerNorm(cfg.layer_norm_eps, name="LayerNorm")(x)


class PlainLayers(nn.Module):  # HF's encoder/layer/<i>
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, mask_bias):
        for i in range(self.cfg.num_hidden_layers):
            x = PlainLayer(self.cfg, name=str(i))(x, mask_bias)
        return x


class PlainEncoder(nn.Module):  # HF's "encoder": it only holds "layer"
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, mask_bias):
        return PlainLayers(self.cfg, name="layer")(x, mask_bias)


class PlainPooler(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        return jnp.tanh(nn.Dense(self.cfg.hidden_size, name="dense")(x[:, 0]))  # (B, D)


class PlainBertBody(nn.Module):  # HF's "bert": embeddings, encoder, pooler
    cfg: ModelConfig

    @nn.compact
    def __call__(self, ids, types, mask):
        x = PlainEmbeddings(self.cfg, name="embeddings")(ids, types)
        bias = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(x.dtype).min)  # (B,1,1,T)
        x = PlainEncoder(self.cfg, name="encoder")(x, bias)  # (B, T, D)
        return PlainPooler(self.cfg, name="pooler")(x)


class PlainBert(nn.Module):
    """``SequenceClassifier`` for BERT in eval mode, in plain linen (no dropout)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids, attention_mask):
        pooled = PlainBertBody(self.cfg, name="bert")(input_ids, token_type_ids, attention_mask)
        return nn.Dense(self.cfg.num_labels, name="classifier")(pooled)  # (B, num_labels)


class SmallCNN(nn.Module):
    """(B, H, W, C) images -> (B, classes) logits."""

    classes: int = 3

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), padding="SAME", name="conv1")(x))
        x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2), name="conv2")(x))  # (B, H/2, W/2, 16)
        return nn.Dense(self.classes, name="classifier")(x.mean(axis=(1, 2)))


class ViTBlock(nn.Module):
    """Patch embedding, one pre-LN attention + MLP block, mean pool, classifier."""

    dim: int = 32
    heads: int = 4
    classes: int = 3

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.dim, (4, 4), strides=(4, 4), name="patch")(x)  # (B, H/4, W/4, D)
        x = x.reshape(x.shape[0], -1, self.dim)  # (B, N, D)
        h = nn.LayerNorm(name="ln1")(x)
        hd = self.dim // self.heads
        q, k, v = (nn.DenseGeneral((self.heads, hd), name=n)(h)
                   for n in ("query", "key", "value"))  # (B, N, H, Dh)
        probs = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(hd), axis=-1)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v)  # (B, N, H, Dh)
        x = x + nn.Einsum((self.heads, hd, self.dim), "bnhd,hde->bne", name="out")(ctx)
        h = nn.LayerNorm(name="ln2")(x)
        x = x + nn.Dense(self.dim, name="fc2")(nn.gelu(nn.Dense(2 * self.dim, name="fc1")(h)))
        return nn.Dense(self.classes, name="classifier")(x.mean(axis=1))
