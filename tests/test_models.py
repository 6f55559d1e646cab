"""The encoder: config validation, padding, RoBERTa position ids, parameter paths."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_model

from lora_jax import ModelConfig, SequenceClassifier
from lora_jax.models import Encoder, gelu, softmax
from lora_jax.trees import flatten


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size=30"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"num_labels": 0}, "num_labels"),
        ({"model_type": "gpt2"}, "model_type"),
        ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
    ],
)
def test_bad_model_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"ModelConfig.{field}"):
        ModelConfig.tiny(**kwargs)


def test_parameter_paths_follow_hugging_face_names(tiny_cfg):
    _, v = init_model(tiny_cfg, None)
    paths = set(flatten(v["params"]))
    for p in [
        "bert/embeddings/word_embeddings/embedding",
        "bert/embeddings/LayerNorm/scale",
        "bert/encoder/layer/0/attention/self/query/kernel",
        "bert/encoder/layer/1/attention/output/dense/bias",
        "bert/encoder/layer/1/attention/output/LayerNorm/scale",
        "bert/encoder/layer/0/intermediate/dense/kernel",
        "bert/encoder/layer/0/output/dense/kernel",
        "bert/pooler/dense/kernel",
        "classifier/kernel",
    ]:
        assert p in paths, p


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_padding_does_not_change_real_token_outputs(model_type):
    cfg = ModelConfig.tiny(model_type=model_type, pad_token_id=1 if model_type == "roberta" else 0)
    enc = Encoder(cfg)
    ids = jax.random.randint(jax.random.key(0), (1, 6), 3, cfg.vocab_size)
    v = enc.init(jax.random.key(1), ids)
    short, _ = enc.apply(v, ids)
    padded_ids = jnp.concatenate([ids, jnp.full((1, 4), cfg.pad_token_id)], axis=1)
    mask = jnp.array([[1] * 6 + [0] * 4])
    long, _ = enc.apply(v, padded_ids, None, mask)
    np.testing.assert_allclose(long[:, :6], short, atol=1e-5)


def test_roberta_position_ids_start_after_the_pad_id():
    """RoBERTa numbers real tokens from pad_token_id + 1: shifting the position table by that
    offset must reproduce a BERT-style model that counts from 0."""
    rob = ModelConfig.tiny(model_type="roberta", pad_token_id=1, type_vocab_size=1)
    bert = rob.replace(model_type="bert")
    ids = jnp.array([[5, 6, 7, 8]])
    v_rob = Encoder(rob).init(jax.random.key(0), ids)
    table = v_rob["params"]["embeddings"]["position_embeddings"]["embedding"]
    v_bert = jax.tree.map(lambda x: x, v_rob)
    v_bert["params"]["embeddings"]["position_embeddings"]["embedding"] = jnp.roll(table, -2, 0)
    v_bert["params"]["pooler"] = {"dense": {"kernel": jnp.eye(32), "bias": jnp.zeros(32)}}
    out_rob, pooled = Encoder(rob).apply(v_rob, ids)
    out_bert, _ = Encoder(bert).apply(v_bert, ids)
    assert pooled is None and "pooler" not in v_rob["params"]
    np.testing.assert_allclose(out_rob, out_bert, atol=1e-6)


def test_classifier_and_regressor_output_shapes(tiny_cfg):
    ids = jnp.ones((3, 5), jnp.int32)
    for n in (1, 2, 3):
        model, v = init_model(tiny_cfg.replace(num_labels=n), None)
        assert model.apply(v, ids).shape == (3, n)
    rob = ModelConfig.tiny(model_type="roberta", pad_token_id=1)
    model = SequenceClassifier(rob)
    v = model.init(jax.random.key(0), ids)
    assert set(v["params"]["classifier"]) == {"dense", "out_proj"}
    assert model.apply(v, ids).shape == (3, 2)


def test_softmax_is_jax_softmax_with_the_output_only_derivative():
    """Attention's softmax gives ``jax.nn.softmax``'s values bit for bit (masked keys included)
    and, in both modes of differentiation, the derivative ``y * (g - sum(y * g))``: within
    float rounding of float64 and of the default ``jax.nn.softmax``'s gradient (which goes
    through its division); a masked key gets probability and gradient exactly 0."""
    kx, kg = jax.random.split(jax.random.PRNGKey(0))
    x = 4 * jax.random.normal(kx, (3, 4, 8, 8))
    x = x.at[0, :, :, -3:].set(-1e9)  # the encoder's mask bias on three padded keys
    g = jax.random.normal(kg, x.shape)
    y = softmax(x)
    assert (np.asarray(y) == np.asarray(jax.nn.softmax(x, axis=-1))).all()
    y64, g64 = np.asarray(y, np.float64), np.asarray(g, np.float64)
    expected = y64 * (g64 - (y64 * g64).sum(-1, keepdims=True))
    (reverse,) = jax.vjp(softmax, x)[1](g)
    _, forward = jax.jvp(softmax, (x,), (g,))
    np.testing.assert_allclose(np.asarray(reverse), expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(forward), expected, atol=1e-6)
    (default,) = jax.vjp(lambda z: jax.nn.softmax(z, axis=-1), x)[1](g)
    np.testing.assert_allclose(np.asarray(reverse), np.asarray(default), atol=1e-5)
    assert (np.asarray(y)[0, :, :, -3:] == 0).all()
    assert (np.asarray(reverse)[0, :, :, -3:] == 0).all()


def test_gelu_is_the_exact_gelu_of_the_reference_code():
    """Our GELU (``x * 0.5 * (1 + erf(x / sqrt 2))``, BERT's reference formula) is the exact
    GELU: within 1.2e-6 of float64 on [-8, 8] and of ``jax.nn.gelu(approximate=False)`` (the
    tanh approximation is more than 1e-4 away), and its gradient is ``Phi(x) + x phi(x)``."""
    xs = np.linspace(-8, 8, 20001)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(xs / math.sqrt(2)))
    exact = xs * cdf
    ours = np.asarray(gelu(jnp.asarray(xs, jnp.float32)), np.float64)
    assert np.max(np.abs(ours - exact)) < 1.2e-6
    jax_exact = np.asarray(jax.nn.gelu(jnp.asarray(xs, jnp.float32), approximate=False))
    assert np.max(np.abs(ours - jax_exact)) < 1.2e-6
    tanh = np.asarray(jax.nn.gelu(jnp.asarray(xs, jnp.float32), approximate=True))
    assert np.max(np.abs(tanh - exact)) > 1e-4
    grad = jax.vmap(jax.grad(gelu))(jnp.asarray(xs, jnp.float32))
    pdf = np.exp(-xs**2 / 2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(np.asarray(grad), cdf + xs * pdf, atol=2e-6)
