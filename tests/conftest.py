"""Shared fixtures: a tiny model with adapters, and a batch for it."""

import jax
import jax.numpy as jnp
import pytest

from lora_jax import LoRAConfig, ModelConfig, SequenceClassifier


def make_batch(cfg: ModelConfig, batch: int = 4, length: int = 12, seed: int = 0) -> dict:
    """A random batch with some padding at the end of every other row."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    ids = jax.random.randint(k1, (batch, length), 3, cfg.vocab_size)
    mask = jnp.ones((batch, length), jnp.int32).at[::2, length - 3:].set(0)
    ids = jnp.where(mask > 0, ids, cfg.pad_token_id)
    return {
        "input_ids": ids,
        "token_type_ids": jnp.zeros_like(ids).at[:, length // 2:].set(int(cfg.type_vocab_size > 1)),
        "attention_mask": mask,
        "label": jax.random.randint(k2, (batch,), 0, max(cfg.num_labels, 2)),
    }


def init_model(cfg: ModelConfig, lora: LoRAConfig | None, seed: int = 0):
    model = SequenceClassifier(cfg, lora)
    k_params, k_lora = jax.random.split(jax.random.key(seed))
    ids = jnp.zeros((1, 8), jnp.int32)
    variables = model.init({"params": k_params, "lora": k_lora}, ids)
    return model, variables


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return ModelConfig.tiny()
