"""What trains is data: label rules, multi_transform freezing, optimizer state, the train step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import init_model, make_batch

from lora_jax import (
    LoRAConfig,
    ModelConfig,
    SequenceClassifier,
    count_params,
    create_train_state,
    make_optimizer,
    train_step,
    trainable_labels,
    tree_bytes,
)
from lora_jax.trees import flatten

LORA = LoRAConfig(rank=4, alpha=16.0)


def setup(method, cfg=None, lora=LORA, weight_decay=0.1, lr=1e-3, steps=100, warmup=0.0):
    cfg = cfg or ModelConfig.tiny()
    model, variables = init_model(cfg, lora if method == "lora" else None)
    if method == "lora":  # start from a non-zero B so that A receives gradients too
        variables = {**variables, "lora": jax.tree.map(lambda x: x + 0.01, variables["lora"])}
    labels = trainable_labels(variables, method)
    tx = make_optimizer(labels, learning_rate=lr, total_steps=steps, warmup_ratio=warmup,
                        weight_decay=weight_decay)
    state = create_train_state(model.apply, variables, method, tx, jax.random.key(7))
    return state, labels, make_batch(cfg)


def test_lora_labels_train_adapters_and_head_only():
    state, labels, _ = setup("lora")
    flat = flatten(labels)
    for path, label in flat.items():
        expected = "trainable" if path.startswith(("lora/", "params/classifier/")) else "frozen"
        assert label == expected, path
    assert "params/bert/pooler/dense/kernel" in flat  # the pooler is pretrained: frozen


def test_bitfit_labels_train_every_bias_and_the_head():
    _, labels, _ = setup("bitfit")
    for path, label in flatten(labels).items():
        trained = path.endswith("/bias") or path.startswith("params/classifier/")
        assert label == ("trainable" if trained else "frozen"), path


def test_a_path_no_rule_covers_is_an_error():
    _, variables = init_model(ModelConfig.tiny(), LORA)
    with pytest.raises(ValueError, match=r"'lora/bert/encoder/layer/0/attention/self/query/a' "
                                         r"is not covered by any rule of method 'full'"):
        trainable_labels(variables, "full")
    with pytest.raises(ValueError, match="unknown method 'lroa'"):
        trainable_labels(variables, "lroa")


@pytest.mark.parametrize("method", ["full", "lora", "bitfit", "head"])
def test_frozen_leaves_bit_identical_and_trainable_leaves_move(method):
    state, labels, batch = setup(method, weight_decay=0.1)
    before = jax.tree.map(np.array, state.variables)
    for _ in range(4):
        state, _ = train_step(state, batch)
    after = flatten(jax.tree.map(np.array, state.variables))
    n_frozen = 0
    for path, label in flatten(labels).items():
        if label == "frozen":
            n_frozen += 1
            assert np.array_equal(after[path], flatten(before)[path]), f"frozen {path} moved"
        else:
            assert not np.array_equal(after[path], flatten(before)[path]), f"{path} did not move"
    assert (n_frozen == 0) == (method == "full")


@pytest.mark.parametrize("method", ["full", "lora", "bitfit", "head"])
def test_optimizer_state_holds_nothing_for_frozen_leaves(method):
    state, labels, _ = setup(method)
    trainable_bytes = sum(
        np.asarray(x).nbytes
        for x, lab in zip(jax.tree.leaves(state.variables), jax.tree.leaves(labels), strict=True)
        if lab == "trainable"
    )
    arrays = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
    scalars = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) == 0]
    assert sum(x.nbytes for x in arrays) == 2 * trainable_bytes  # Adam's mu and nu
    assert tree_bytes(state.opt_state) == 2 * trainable_bytes + sum(x.nbytes for x in scalars)
    assert len(scalars) <= 2  # Adam's step count and the schedule's


def test_roberta_base_lora_parameter_count_matches_the_paper():
    cfg = ModelConfig.roberta_base()
    lora = LoRAConfig(rank=8, targets=("query", "value"))
    model = SequenceClassifier(cfg, lora)
    shapes = jax.eval_shape(
        lambda: model.init({"params": jax.random.key(0), "lora": jax.random.key(1)},
                           jnp.zeros((1, 8), jnp.int32))
    )
    # the paper's |Theta| = 2 * L_hat * d_model * r, with L_hat the number of adapted matrices
    L_hat, d, r = 2 * 12, 768, 8
    assert count_params(shapes["lora"]) == 2 * L_hat * d * r == 294_912
    assert count_params(shapes, "lora", include_head=False) == 294_912
    head = (d * d + d) + (d * cfg.num_labels + cfg.num_labels)  # dense + out_proj
    assert count_params(shapes, "lora") == 294_912 + head
    # the frozen base: RobertaModel's 124,645,632 parameters less its pooler (768^2 + 768),
    # which roberta-base's checkpoint does not train; RoBERTa's head takes the pooler's place
    assert count_params(shapes["params"]) - head == 124_645_632 - (d * d + d)


def test_lora_overfits_a_single_batch():
    cfg = ModelConfig.tiny(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    state, _, batch = setup("lora", cfg=cfg, lr=1e-2, steps=200, weight_decay=0.0)
    losses = []
    for _ in range(150):
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.05, losses[::10]


def test_train_step_compiles_once_for_the_same_shapes():
    state, _, batch = setup("lora")
    state, _ = train_step(state, batch)  # may compile
    n = train_step._cache_size()
    for _ in range(3):
        state, _ = train_step(state, batch)
    assert train_step._cache_size() == n


def test_train_step_donates_the_old_state():
    state, _, batch = setup("lora")
    old = state
    state, _ = train_step(state, batch)
    leaf = jax.tree.leaves(old.opt_state)[-1]
    assert leaf.is_deleted()


def test_optax_masked_alone_moves_frozen_weights_but_ours_does_not():
    """optax.masked applies AdamW to masked-in leaves and passes the *raw gradient* through for
    the others, so with apply_updates the "frozen" kernels still move."""
    state, labels, batch = setup("lora")
    mask = jax.tree.map(lambda lab: lab == "trainable", labels)
    naive = optax.masked(optax.adamw(1e-3), mask)
    grads = jax.grad(
        lambda v: optax.softmax_cross_entropy_with_integer_labels(
            state.apply_fn(v, batch["input_ids"], batch["token_type_ids"],
                           batch["attention_mask"]), batch["label"]).mean()
    )(state.variables)
    updates, _ = naive.update(grads, naive.init(state.variables), state.variables)
    moved = optax.apply_updates(state.variables, updates)
    path = "params/bert/encoder/layer/0/attention/self/query/kernel"
    w0 = np.array(flatten(state.variables)[path])
    assert not np.array_equal(np.asarray(flatten(moved)[path]), w0)  # the pitfall
    state, _ = train_step(state, batch)
    np.testing.assert_array_equal(np.asarray(flatten(state.variables)[path]), w0)


def test_xla_drops_frozen_weight_gradients():
    """The compiled LoRA step does far fewer FLOPs than the full step (no dW matmuls)."""
    cfg = ModelConfig.tiny(hidden_size=128, intermediate_size=512, num_attention_heads=4)

    def flops(method):
        state, _, _ = setup(method, cfg=cfg)
        batch = make_batch(cfg, batch=8, length=32)
        return train_step.lower(state, batch).compile().cost_analysis()["flops"]

    full, lora = flops("full"), flops("lora")
    # forward ~ 1/3 of a full step; LoRA keeps the forward and the activation gradients only
    assert lora < 0.75 * full, (lora, full)


def test_regression_head_trains_with_mse():
    cfg = ModelConfig.tiny(num_labels=1, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
    state, _, batch = setup("lora", cfg=cfg, lr=1e-2, steps=200, weight_decay=0.0)
    batch = {**batch, "label": jnp.array([0.5, 4.0, 2.5, 1.0])}
    first = None
    for _ in range(150):
        state, m = train_step(state, batch)
        first = first if first is not None else float(m["loss"])
        assert "accuracy" not in m
    assert float(m["loss"]) < 0.1 * first


def test_split_and_combine_partition_the_variables():
    from lora_jax.optim import combine, split

    _, variables = init_model(ModelConfig.tiny(), LORA)
    trainable, frozen = split(variables, "lora")
    assert set(trainable) == {"lora", "params"} and set(trainable["params"]) == {"classifier"}
    assert count_params(trainable) == count_params(variables, "lora")
    assert count_params(trainable) + count_params(frozen) == count_params(variables)
    jax.tree.map(np.testing.assert_array_equal, combine(trainable, frozen), variables)
    with pytest.raises(ValueError, match="appears in more than one tree"):
        combine(trainable, trainable)
