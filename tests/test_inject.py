"""``lora_jax.inject``: LoRA on models written in plain linen (``tests/plain_models.py``)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from plain_models import PlainBert, SmallCNN, ViTBlock

from lora_jax import (
    LoRAConfig,
    ModelConfig,
    SequenceClassifier,
    apply_adapter,
    count_params,
    fingerprint,
    make_optimizer,
    merge,
    read_adapter,
    save_adapter,
    trainable_labels,
    unmerge,
)
from lora_jax.inject import inject
from lora_jax.trees import flatten, perturb

RNGS = {"params": jax.random.key(0), "lora": jax.random.key(1)}
IMAGES = jax.random.normal(jax.random.key(2), (4, 8, 8, 3))  # (B, H, W, C)


def _bert_batch(cfg, b=3, t=7):
    ids = jax.random.randint(jax.random.key(3), (b, t), 1, cfg.vocab_size)
    mask = jnp.ones((b, t), jnp.int32).at[0, 5:].set(0)
    return ids, jnp.zeros_like(ids), mask


@pytest.fixture(scope="module")
def bert_pair():
    """The LoRADense encoder and the plain one through inject, with the same adapters."""
    cfg = ModelConfig.tiny()
    ours = SequenceClassifier(cfg, LoRAConfig(rank=2, alpha=6.0, targets=("query", "value")))
    plain = inject(PlainBert(cfg),
                   LoRAConfig(rank=2, alpha=6.0, targets=(r"attention/self/(query|value)$",)))
    batch = _bert_batch(cfg)
    v_ours = ours.init(RNGS, *batch)
    v_plain = plain.init(RNGS, *batch)
    return ours, plain, v_ours, v_plain, batch


def test_plain_bert_has_our_encoders_params_and_gets_the_same_adapters(bert_pair):
    _, _, v_ours, v_plain, _ = bert_pair
    shapes = jax.tree.map(jnp.shape, v_ours)
    assert jax.tree.map(jnp.shape, v_plain) == shapes  # same paths, same shapes
    # the same A, drawn from the same key at the same path; B = 0
    for path, x in flatten(v_ours["lora"]).items():
        np.testing.assert_array_equal(flatten(v_plain["lora"])[path], x)


@pytest.mark.slow
def test_injection_gives_the_same_logits_gradients_and_adapter_file(bert_pair, tmp_path):
    ours, plain, v_ours, _, batch = bert_pair
    v = {**v_ours, "lora": perturb(v_ours["lora"], jax.random.key(4), 0.3)}  # B != 0
    np.testing.assert_allclose(plain.apply(v, *batch), ours.apply(v, *batch), atol=1e-6)

    def loss(model):
        return lambda v: model.apply(v, *batch).sum()

    g_ours, g_plain = jax.grad(loss(ours))(v), jax.grad(loss(plain))(v)
    for path, g in flatten(g_ours).items():
        np.testing.assert_allclose(flatten(g_plain)[path], g, atol=1e-5)
    files = {}
    for name, model in (("ours", ours), ("plain", plain)):  # three steps each, then save
        tx = make_optimizer(trainable_labels(v, "lora"), learning_rate=1e-2, total_steps=3)
        w, opt = v, tx.init(v)
        for _ in range(3):
            updates, opt = tx.update(jax.grad(loss(model))(w), opt, w)
            w = optax.apply_updates(w, updates)
        meta = {"base_fingerprint": fingerprint(v["params"]), "task": None}
        files[name] = save_adapter(tmp_path / f"{name}.safetensors", w, "lora", meta)
        trained = w
    # the plain model's file goes back onto its base, checked against the base's fingerprint
    back, _ = apply_adapter(files["plain"], {"params": v["params"]}, fingerprint(v["params"]), v)
    np.testing.assert_array_equal(plain.apply(back, *batch), plain.apply(trained, *batch))
    files = {name: read_adapter(f)[0] for name, f in files.items()}
    assert files["ours"].keys() == files["plain"].keys()
    assert {k.split("/")[0] for k in files["ours"]} == {"lora", "params"}  # adapters + head
    for key, x in files["ours"].items():
        np.testing.assert_allclose(files["plain"][key], x, atol=1e-5)


@pytest.mark.slow
def test_without_adapters_or_with_b_zero_an_injected_model_is_the_plain_model(bert_pair):
    ours, plain, _, v_plain, batch = bert_pair
    bare = PlainBert(ours.cfg).apply({"params": v_plain["params"]}, *batch)
    np.testing.assert_array_equal(plain.apply({"params": v_plain["params"]}, *batch), bare)
    np.testing.assert_array_equal(plain.apply(v_plain, *batch), bare)  # B = 0
    for model in (SmallCNN(), ViTBlock()):
        lora = inject(model, LoRAConfig(rank=2, targets=(".",)))  # every layer
        v = lora.init(RNGS, IMAGES)
        np.testing.assert_array_equal(lora.apply(v, IMAGES),
                                      model.apply({"params": v["params"]}, IMAGES))


def test_merge_equals_unmerged_for_dense_densegeneral_einsum_and_conv():
    cfg = LoRAConfig(rank=2, alpha=5.0, targets=("patch", "query", "value", "out", "fc1"))
    model = inject(ViTBlock, cfg)()
    v = model.init(RNGS, IMAGES)
    kinds = {"patch": (4, 4, 3, 32), "query": (32, 4, 8), "out": (4, 8, 32), "fc1": (32, 64)}
    for name, shape in kinds.items():  # Conv, DenseGeneral, Einsum, Dense
        assert v["params"][name]["kernel"].shape == shape
    v = {**v, "lora": perturb(v["lora"], jax.random.key(5), 0.5)}
    y = model.apply(v, IMAGES)
    base = ViTBlock().apply({"params": v["params"]}, IMAGES)
    assert float(jnp.abs(y - base).max()) > 1e-2  # the adapters matter
    merged = merge(v, cfg)
    np.testing.assert_allclose(ViTBlock().apply(merged, IMAGES), y, atol=2e-5)
    back = unmerge(merged, v["lora"], cfg)
    for path, w in flatten(v["params"]).items():
        np.testing.assert_allclose(flatten(back["params"])[path], w, atol=1e-6)


def test_the_class_form_and_the_instance_form_are_the_users_class():
    cfg = LoRAConfig(rank=2, targets=("conv",))
    from_class, from_instance = inject(SmallCNN, cfg)(classes=5), inject(SmallCNN(classes=5), cfg)
    for model in (from_class, from_instance):
        assert isinstance(model, SmallCNN) and model.classes == 5
        assert model.init(RNGS, IMAGES)["params"]["classifier"]["kernel"].shape == (16, 5)


def test_a_target_that_matches_nothing_lists_the_layers_there_are():
    model = inject(SmallCNN(), LoRAConfig(targets=("conv1", "attention")))
    with pytest.raises(ValueError, match=r"\['attention'\] match no Dense.*conv1 \(Conv\), "
                                         r"conv2 \(Conv\), classifier \(Dense\)"):
        model.init(RNGS, IMAGES)


@pytest.mark.parametrize("model, targets", [
    (SmallCNN(), ("conv",)),
    (ViTBlock(), ("patch", "query", "value", "out")),
], ids=["cnn", "vit"])
def test_lora_trains_a_cnn_and_a_vit_block_with_frozen_weights_bit_identical(model, targets):
    labels_y = jnp.array([0, 1, 2, 1])
    lora = inject(model, LoRAConfig(rank=2, alpha=4.0, targets=targets))
    v0 = lora.init(RNGS, IMAGES)
    tx = make_optimizer(trainable_labels(v0, "lora"), learning_rate=3e-2, total_steps=40,
                        warmup_ratio=0.0)

    def loss(v):
        logits = lora.apply(v, IMAGES)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels_y).mean()

    @jax.jit
    def step(v, opt):
        value, grads = jax.value_and_grad(loss)(v)
        updates, opt = tx.update(grads, opt, v)
        return optax.apply_updates(v, updates), opt, value

    v, opt, losses = v0, tx.init(v0), []
    for _ in range(40):
        v, opt, value = step(v, opt)
        losses.append(float(value))
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    before, after = flatten(v0), flatten(v)
    for path, x in before.items():
        moved = not np.array_equal(after[path], x)
        trains = path.startswith("lora/") or path.startswith("params/classifier/")
        assert moved == trains, path  # frozen: bit-identical; A, B and the head: trained


def test_parameter_counts_are_r_times_d_in_plus_d_out_of_each_layer():
    cfg = LoRAConfig(rank=3, targets=("conv",))
    v = jax.eval_shape(lambda: inject(SmallCNN(), cfg).init(RNGS, IMAGES))
    conv1, conv2 = 3 * (3 * 3 * 3 + 8), 3 * (3 * 3 * 8 + 16)  # r * (window*c_in + c_out)
    assert count_params(v, "lora", include_head=False) == conv1 + conv2
    assert count_params(v, "lora") == conv1 + conv2 + 16 * 3 + 3


def test_a_layer_called_twice_has_one_adapter():
    class Shared(nn.Module):
        @nn.compact
        def __call__(self, x):
            dense = nn.Dense(4, name="shared")
            return dense(nn.relu(dense(x)))

    model = inject(Shared(), LoRAConfig(rank=1, targets=("shared",)))
    v = model.init(RNGS, jnp.ones((2, 4)))
    assert jax.tree.map(jnp.shape, v["lora"]) == {"shared": {"a": (4, 1), "b": (1, 4)}}


@pytest.mark.parametrize("layer, x, message", [
    (nn.Einsum((4, 3, 2), "bd,hdk->bhk"), jnp.ones((2, 3)), "write the kernel as dhk"),
    (nn.Einsum((2, 3, 4), "bhd,hdk->bhk"), jnp.ones((2, 2, 3)), r"axes \['h'\]"),
    (nn.DenseGeneral(4, batch_dims=(0,)), jnp.ones((2, 3)), "batch_dims"),
    (nn.Conv(4, (3,), feature_group_count=2), jnp.ones((1, 5, 4)), "grouped"),
])
def test_layers_lora_cannot_be_read_into_are_refused_by_name(layer, x, message):
    class One(nn.Module):
        @nn.compact
        def __call__(self, x):
            return layer.clone(parent=self, name="layer")(x)

    with pytest.raises(ValueError, match=f"layer layer: .*{message}"):
        inject(One(), LoRAConfig(rank=1, targets=("layer",))).init(RNGS, x)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="dora"):
        inject(SmallCNN(), LoRAConfig(dora=True, targets=("conv",)))
    with pytest.raises(ValueError, match="not a regex"):
        inject(SmallCNN(), LoRAConfig(targets=("conv(",)))
    with pytest.raises(ValueError, match=r"rank=9 exceeds min\(d_in, d_out\)=8 of layer conv1"):
        inject(SmallCNN(), LoRAConfig(rank=9, targets=("conv1",))).init(RNGS, IMAGES)
    with pytest.raises(TypeError, match="flax.linen Module"):
        inject(object(), LoRAConfig())


def test_a_subclass_of_an_injected_model_still_runs_its_adapters():
    cfg = LoRAConfig(rank=2, targets=("conv1",))

    class Mine(inject(SmallCNN, cfg)):  # the injected call must not recurse into itself
        pass

    v = Mine().init(RNGS, IMAGES)
    assert set(v["lora"]) == {"conv1"}
