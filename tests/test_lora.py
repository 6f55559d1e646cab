"""The LoRA convention: y = x W + b + scale * dropout(x) A B, B = 0 at init, merge/unmerge."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_model, make_batch

from lora_jax import LoRAConfig, LoRADense, ModelConfig, SequenceClassifier, merge, unmerge
from lora_jax.trees import flatten


def perturb_b(variables: dict, seed: int = 1, std: float = 0.5) -> dict:
    """Give every B a random value, so the adapters change the output."""
    leaves, treedef = jax.tree.flatten_with_path(variables["lora"])
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [
        std * jax.random.normal(k, x.shape) if path[-1].key == "b" else x
        for k, (path, x) in zip(keys, leaves, strict=True)
    ]
    return {**variables, "lora": jax.tree.unflatten(treedef, new)}


def test_lora_dense_matches_the_formula():
    cfg = LoRAConfig(rank=3, alpha=12.0, targets=("query",))
    layer = LoRADense(5, "query", cfg)
    x = jax.random.normal(jax.random.key(0), (2, 7))
    v = layer.init({"params": jax.random.key(1), "lora": jax.random.key(2)}, x)
    v = {**v, "lora": {"b": jax.random.normal(jax.random.key(3), (3, 5)), "a": v["lora"]["a"]}}
    w, b = v["params"]["kernel"], v["params"]["bias"]
    a, bb = v["lora"]["a"], v["lora"]["b"]
    expected = x @ w + b + (12.0 / 3) * (x @ a @ bb)
    np.testing.assert_allclose(layer.apply(v, x), expected, rtol=1e-5, atol=1e-6)
    assert a.shape == (7, 3) and bb.shape == (3, 5)


def test_untargeted_layer_has_no_adapter():
    layer = LoRADense(5, "key", LoRAConfig(targets=("query",), rank=2))
    v = layer.init({"params": jax.random.key(0), "lora": jax.random.key(1)}, jnp.ones((1, 4)))
    assert "lora" not in v


def test_b_is_zero_at_init_so_the_adapted_model_equals_the_base(tiny_cfg):
    lora = LoRAConfig(rank=4, alpha=16.0, targets=("query", "key", "value", "output", "pooler"))
    model, variables = init_model(tiny_cfg, lora)
    for path, leaf in flatten(variables["lora"]).items():
        if path.endswith("/b"):
            assert not np.any(np.asarray(leaf)), path
        else:
            assert np.any(np.asarray(leaf)), path  # A is random, not zero
    batch = make_batch(tiny_cfg)
    args = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    adapted = model.apply(variables, *args)
    base = SequenceClassifier(tiny_cfg).apply({"params": variables["params"]}, *args)
    np.testing.assert_array_equal(np.asarray(adapted), np.asarray(base))


def test_model_without_lora_collection_is_the_plain_model(tiny_cfg):
    model, variables = init_model(tiny_cfg, LoRAConfig(rank=2))
    variables = perturb_b(variables)
    batch = make_batch(tiny_cfg)
    args = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    without = model.apply({"params": variables["params"]}, *args)
    plain = SequenceClassifier(tiny_cfg).apply({"params": variables["params"]}, *args)
    np.testing.assert_array_equal(np.asarray(without), np.asarray(plain))
    assert not np.allclose(model.apply(variables, *args), plain)  # the adapters do something


@pytest.mark.parametrize(("rslora", "targets"), [
    (False, ("query", "value", "intermediate")),
    (True, ("query", "value", "intermediate")),
    (False, ("value", "pooler")),  # BERT's pooler, as PEFT's "dense" recipe adapts it
])
def test_merged_equals_unmerged_with_alpha_not_equal_r(tiny_cfg, rslora, targets):
    lora = LoRAConfig(rank=4, alpha=16.0, targets=targets, rslora=rslora)
    model, variables = init_model(tiny_cfg, lora)
    variables = perturb_b(variables)
    batch = make_batch(tiny_cfg)
    args = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    unmerged_out = model.apply(variables, *args)
    merged = merge(variables, lora)
    assert "lora" not in merged
    merged_out = SequenceClassifier(tiny_cfg).apply(merged, *args)
    np.testing.assert_allclose(merged_out, unmerged_out, atol=1e-5)
    base_out = SequenceClassifier(tiny_cfg).apply({"params": variables["params"]}, *args)
    assert not np.allclose(base_out, unmerged_out, atol=1e-3)


def test_unmerge_recovers_every_kernel(tiny_cfg):
    lora = LoRAConfig(rank=4, alpha=16.0, targets=("query", "value", "output"))
    _, variables = init_model(tiny_cfg, lora)
    variables = perturb_b(variables)
    restored = unmerge(merge(variables, lora), variables["lora"], lora)
    before, after = flatten(variables), flatten(restored)
    assert before.keys() == after.keys()
    changed = 0
    merged = flatten(merge(variables, lora))
    for path in before:
        np.testing.assert_allclose(after[path], before[path], atol=1e-6, err_msg=path)
        if path.startswith("params/") and not np.array_equal(merged[path], before[path]):
            changed += 1
    # query, value and output kernels in each of the 2 layers were changed by merge
    assert changed == 3 * tiny_cfg.num_hidden_layers


def test_merge_is_pure(tiny_cfg):
    lora = LoRAConfig(rank=2)
    _, variables = init_model(tiny_cfg, lora)
    variables = perturb_b(variables)
    snapshot = jax.tree.map(np.array, variables)
    merge(variables, lora)
    jax.tree.map(np.testing.assert_array_equal, variables, snapshot)


def test_merge_errors():
    cfg = LoRAConfig(rank=2)
    with pytest.raises(ValueError, match="no 'lora' collection"):
        merge({"params": {}}, cfg)
    with pytest.raises(ValueError, match="not merged"):
        unmerge({"params": {}, "lora": {}}, {}, cfg)
    lora = {"x": {"a": jnp.ones((3, 2)), "b": jnp.ones((2, 4))}}
    with pytest.raises(ValueError, match="x has no kernel"):
        merge({"params": {"y": {"kernel": jnp.ones((3, 4))}}, "lora": lora}, cfg)
    with pytest.raises(ValueError, match=r"shape \(3, 4\).*\(3, 5\)"):
        merge({"params": {"x": {"kernel": jnp.ones((3, 5))}}, "lora": lora}, cfg)


def test_scale_is_alpha_over_r_or_sqrt_r():
    assert LoRAConfig(rank=4, alpha=16).scale == 4.0
    assert LoRAConfig(rank=4, alpha=16, rslora=True).scale == 8.0
    assert math.isclose(LoRAConfig(rank=8, alpha=8).scale, 1.0)


def test_kaiming_and_gaussian_init_of_a(tiny_cfg):
    for scheme, check in [
        ("kaiming", lambda a: np.abs(a).max() <= 1 / math.sqrt(a.shape[0])),
        ("gaussian", lambda a: 0.5 / a.shape[1] < a.std() < 2.0 / a.shape[1]),
    ]:
        lora = LoRAConfig(rank=8, init=scheme, targets=("intermediate",))
        _, v = init_model(ModelConfig.tiny(hidden_size=64), lora)
        a = np.asarray(v["lora"]["bert"]["encoder"]["layer"]["0"]["intermediate"]["dense"]["a"])
        assert a.shape == (64, 8) and check(a), scheme


def test_lora_dropout_acts_on_the_adapter_path_only(tiny_cfg):
    """With B = 0 and no model dropout, LoRA dropout cannot change the output."""
    cfg = tiny_cfg.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    lora = LoRAConfig(rank=2, dropout=0.5)
    model, variables = init_model(cfg, lora)
    batch = make_batch(cfg)
    args = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    det = model.apply(variables, *args)
    drop = model.apply(variables, *args, deterministic=False, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_array_equal(np.asarray(det), np.asarray(drop))
    variables = perturb_b(variables)
    det = model.apply(variables, *args)
    drop = model.apply(variables, *args, deterministic=False, rngs={"dropout": jax.random.key(0)})
    assert not np.allclose(det, drop)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rank": 0}, "rank"),
        ({"rank": -2}, "rank"),
        ({"rank": 2.5}, "rank"),
        ({"alpha": 0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"init": "xavier"}, "init"),
        ({"targets": ()}, "targets"),
        ({"targets": "query"}, "targets"),
    ],
)
def test_bad_lora_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"LoRAConfig.{field}"):
        LoRAConfig(**kwargs)


def test_unknown_target_lists_the_valid_names(tiny_cfg):
    with pytest.raises(ValueError, match=r"unknown layer name\(s\) \['qeury'\].*'query', 'key'"):
        init_model(tiny_cfg, LoRAConfig(targets=("qeury", "value")))


def test_rank_larger_than_the_layer_is_rejected(tiny_cfg):
    with pytest.raises(ValueError, match=r"LoRAConfig.rank=40 exceeds min\(d_in, d_out\)=32"):
        init_model(tiny_cfg, LoRAConfig(rank=40))


def test_the_pooler_is_a_target_of_bert_only(tiny_cfg):
    lora = LoRAConfig(rank=2, targets=("pooler",))
    _, variables = init_model(tiny_cfg, lora)
    assert sorted(flatten(variables["lora"])) == ["bert/pooler/dense/a", "bert/pooler/dense/b"]
    assert variables["lora"]["bert"]["pooler"]["dense"]["a"].shape == (tiny_cfg.hidden_size, 2)
    roberta = tiny_cfg.replace(model_type="roberta", pad_token_id=1)
    with pytest.raises(ValueError, match="'pooler' is BERT's pooler layer; RoBERTa"):
        init_model(roberta, lora)
