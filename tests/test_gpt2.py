"""The GPT-2 decoder: parity with transformers, the loader, LoRA on the fused c_attn, the LM
loss and generation with a key-value cache.

The fixture ``tests/fixtures/gpt2_tiny`` is a random-weight GPT-2 (2 layers, width 32) made once
in the peer environment by ``tools/make_gpt2_fixture.py``; it is not a pretrained model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lora_jax import LoRAConfig, count_params, make_optimizer, merge, trainable_labels, unmerge
from lora_jax.gpt2 import (
    GPT2,
    generate,
    hf_key_to_path,
    lm_loss,
    lm_train_step,
    load_gpt2,
    path_to_hf_key,
)
from lora_jax.model_dir import CheckpointError
from lora_jax.trees import flatten, perturb, unflatten

FIXTURE = Path(__file__).parent / "fixtures" / "gpt2_tiny"
REFERENCE = json.loads((FIXTURE / "reference.json").read_text())
IDS = jnp.array(REFERENCE["input_ids"])  # (2, 8)
QV = LoRAConfig(rank=2, alpha=6.0, targets=("query", "value"))


@pytest.fixture(scope="module")
def pre():
    return load_gpt2(FIXTURE)


def _with_lora(pre, lora, scale=0.3):
    v = GPT2(pre.config, lora).init({"params": jax.random.key(0), "lora": jax.random.key(1)},
                                    IDS)
    return {"params": pre.params, "lora": perturb(v["lora"], jax.random.key(2), scale)}


def test_logits_match_transformers(pre):
    logits = GPT2(pre.config).apply({"params": pre.params}, IDS)
    np.testing.assert_allclose(logits, np.array(REFERENCE["logits"]), atol=1e-4)


def test_greedy_generation_matches_transformers(pre):
    tokens = generate(GPT2(pre.config), {"params": pre.params}, IDS, 8)
    assert tokens.tolist() == REFERENCE["greedy"]


def test_every_key_maps_both_ways():
    for key in load_file(str(FIXTURE / "model.safetensors")):
        assert path_to_hf_key(hf_key_to_path(key)) == key
    assert hf_key_to_path("h.0.attn.c_attn.weight") == "transformer/h/0/attn/c_attn/kernel"


def _copy_with(tmp_path: Path, change) -> Path:
    out = tmp_path / "gpt2"
    shutil.copytree(FIXTURE, out)
    tensors = load_file(str(out / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(out / "model.safetensors"))
    return out


def test_original_gpt2_file_layout_loads_the_same(pre, tmp_path):
    """The Hub's ``gpt2`` files have no ``transformer.`` prefix, carry the causal-mask buffer
    and may hold ``lm_head.weight``: the same parameters."""
    def old_style(t):
        for key in list(t):
            t[key.removeprefix("transformer.")] = t.pop(key)
        t["h.0.attn.bias"] = np.tril(np.ones((24, 24), np.float32))[None, None]
        t["lm_head.weight"] = t["wte.weight"].copy()

    loaded = load_gpt2(_copy_with(tmp_path, old_style))
    assert loaded.fingerprint == pre.fingerprint


@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"), "missing tensor.*h/1/mlp/c_fc/bias"),
    (lambda t: t.update({"transformer.h.0.extra.weight": np.ones(3, np.float32)}),
     r"unexpected tensor.*h\.0\.extra\.weight"),
    (lambda t: t.update({"transformer.h.0.attn.c_attn.weight": np.ones((96, 32), np.float32)}),
     r"shape mismatch: transformer\.h\.0\.attn\.c_attn\.weight: checkpoint \(96, 32\) vs "
     r"model \(32, 96\)"),
    (lambda t: t.update({"lm_head.weight": np.ones((96, 32), np.float32)}), "tied"),
    (lambda t: t.update({"transformer.h.0.attn.bias": np.ones((1, 1, 24, 24), np.float32)}),
     "not a causal"),
], ids=["missing", "unknown", "shape", "untied-head", "mask"])
def test_a_bad_checkpoint_is_refused_naming_the_tensor(tmp_path, change, message):
    with pytest.raises(CheckpointError, match=message):
        load_gpt2(_copy_with(tmp_path, change))


def test_unsupported_config_is_refused_by_name(tmp_path):
    out = tmp_path / "gpt2"
    shutil.copytree(FIXTURE, out)
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "scale_attn_by_inverse_layer_idx": True}))
    with pytest.raises(CheckpointError, match="scale_attn_by_inverse_layer_idx=True"):
        load_gpt2(out)


def test_lora_on_query_and_value_leaves_the_key_third_exactly_untouched(pre):
    d = pre.config.n_embd
    v = _with_lora(pre, QV)
    layer = v["lora"]["transformer"]["h"]["0"]["attn"]["c_attn"]
    assert set(layer) == {"query", "value"}
    assert jax.tree.map(jnp.shape, layer["query"]) == {"a": (d, 2), "b": (2, d)}
    merged = merge(v, QV)
    for i in ("0", "1"):
        w0 = pre.params["transformer"]["h"][i]["attn"]["c_attn"]["kernel"]  # (d, 3d)
        w1 = merged["params"]["transformer"]["h"][i]["attn"]["c_attn"]["kernel"]
        np.testing.assert_array_equal(w1[:, d:2 * d], w0[:, d:2 * d])  # key: bit-identical
        for third in (slice(0, d), slice(2 * d, 3 * d)):  # query, value: updated
            assert float(jnp.abs(w1[:, third] - w0[:, third]).max()) > 1e-3
    # the forward pass's update of the key columns is exactly zero too: the keys the
    # adapted model computes are the base model's
    def keys(variables):
        _, state = GPT2(pre.config, QV).apply(variables, IDS, capture_intermediates=True,
                                              mutable=["intermediates"])
        out = state["intermediates"]["transformer"]["h"]["0"]["attn"]["c_attn"]["__call__"][0]
        return out[..., d:2 * d]

    np.testing.assert_array_equal(keys(v), keys({"params": pre.params}))


@pytest.mark.parametrize("lora", [QV, LoRAConfig(rank=3, alpha=5.0, targets=("c_attn",
                                                                             "attn_proj",
                                                                             "c_fc",
                                                                             "mlp_proj"))],
                         ids=["parts", "whole"])
def test_merge_folds_into_the_fused_kernel_and_unmerge_undoes_it(pre, lora):
    v = _with_lora(pre, lora)
    model = GPT2(pre.config, lora)
    y = model.apply(v, IDS)
    assert float(jnp.abs(y - GPT2(pre.config).apply({"params": pre.params}, IDS)).max()) > 1e-3
    merged = merge(v, lora)
    np.testing.assert_allclose(GPT2(pre.config).apply(merged, IDS), y, atol=1e-5)
    back = unmerge(merged, v["lora"], lora)
    for path, w in flatten(pre.params).items():
        np.testing.assert_allclose(flatten(back["params"])[path], w, atol=1e-6)


def test_b_zero_is_the_base_model_bit_for_bit(pre):
    v = GPT2(pre.config, QV).init({"params": jax.random.key(0), "lora": jax.random.key(1)}, IDS)
    v = {"params": pre.params, "lora": v["lora"]}
    np.testing.assert_array_equal(GPT2(pre.config, QV).apply(v, IDS),
                                  GPT2(pre.config).apply({"params": pre.params}, IDS))


def test_parameter_counts_of_the_papers_query_value_recipe(pre):
    d, r, n = pre.config.n_embd, QV.rank, pre.config.n_layer
    v = _with_lora(pre, QV)
    assert count_params(v, "lora") == n * 2 * r * (d + d)  # A (d, r) + B (r, d) per part
    assert count_params(v) == count_params({"params": pre.params}) + n * 2 * r * 2 * d


@pytest.mark.slow
def test_the_cache_gives_the_same_logits_and_tokens_as_rerunning_everything(pre):
    # sharper weights than the fixture's (std 0.02 repeats one token) so that tokens vary
    params = perturb(pre.params, jax.random.key(3), 1.0)
    model, v = GPT2(pre.config), {"params": params}
    greedy = generate(model, v, IDS[:, :3], 10)
    assert len(set(greedy[0].tolist())) > 2
    np.testing.assert_array_equal(greedy, generate(model, v, IDS[:, :3], 10, use_cache=False))
    key = jax.random.key(4)
    sampled = generate(model, v, IDS[:, :3], 10, top_k=5, rng=key)
    np.testing.assert_array_equal(
        sampled, generate(model, v, IDS[:, :3], 10, top_k=5, rng=key, use_cache=False))
    assert not np.array_equal(sampled, greedy)
    # prefill + one step at a time gives the full sequence's logits
    from lora_jax.gpt2 import init_cache

    full = model.apply(v, IDS)
    cache = init_cache(pre.config, 2, 8)
    first, cache = model.apply(v, IDS[:, :5], cache)
    rest = []
    for t in range(5, 8):
        step, cache = model.apply(v, IDS[:, t:t + 1], cache)
        rest.append(step)
    np.testing.assert_allclose(jnp.concatenate([first, *rest], axis=1), full, rtol=1e-5,
                               atol=1e-4)  # logits of order 10: float32 rounding


def test_generate_refuses_what_it_cannot_do(pre):
    model, v = GPT2(pre.config), {"params": pre.params}
    with pytest.raises(ValueError, match="exceeds the model's 24 positions"):
        generate(model, v, IDS, 17)
    with pytest.raises(ValueError, match="needs rng"):
        generate(model, v, IDS, 2, top_k=3)


def test_lm_loss_counts_only_real_predictions():
    logits = jax.random.normal(jax.random.key(5), (1, 4, 7))
    ids = jnp.array([[1, 2, 3, 0]])
    mask = jnp.array([[1, 1, 1, 0]])
    logp = jax.nn.log_softmax(logits, -1)
    by_hand = -(logp[0, 0, 2] + logp[0, 1, 3]) / 2  # the padded last token is not a target
    np.testing.assert_allclose(lm_loss(logits, ids, mask), by_hand, rtol=1e-6)


def test_lora_lm_training_lowers_the_loss_and_keeps_the_base_bit_identical(pre):
    model = GPT2(pre.config, QV)
    v0 = {"params": pre.params,
          "lora": model.init({"params": jax.random.key(0), "lora": jax.random.key(1)},
                             IDS)["lora"]}
    tx = make_optimizer(trainable_labels(v0, "lora"), learning_rate=3e-2, total_steps=40,
                        warmup_ratio=0.0)
    v, opt = jax.tree.map(jnp.array, v0), tx.init(v0)
    mask = jnp.ones_like(IDS)
    losses = []
    for i in range(40):
        v, opt, loss = lm_train_step(model, tx, "lora", v, opt, IDS, mask,
                                     jax.random.key(i))
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.1, losses[::10]  # a random base: q, v alone move it little
    for path, w in flatten(v0["params"]).items():
        np.testing.assert_array_equal(flatten(v["params"])[path], w)
    assert not np.array_equal(flatten(v["lora"])["transformer/h/0/attn/c_attn/value/b"], 0)


def test_targets_are_checked():
    from lora_jax.validate import ConfigError

    cfg = load_gpt2(FIXTURE).config
    with pytest.raises(ConfigError, match="unknown GPT-2 layer name.*'intermediate'"):
        GPT2(cfg, LoRAConfig(targets=("intermediate",))).init(jax.random.key(0), IDS)
    with pytest.raises(ConfigError, match="exclude each other"):
        GPT2(cfg, LoRAConfig(targets=("c_attn", "query"))).init(jax.random.key(0), IDS)


def test_unflatten_of_the_params_is_the_hf_key_set(pre):
    keys = {path_to_hf_key(p) for p in flatten(pre.params)}
    assert keys == set(load_file(str(FIXTURE / "model.safetensors")))
    assert unflatten(flatten(pre.params)).keys() == {"transformer"}
