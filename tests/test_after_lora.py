"""LoRA's descendants: DoRA, LoRA+ and PiSSA, each against its formula, and each trained end to
end with the frozen weights untouched. Their PEFT interop is in ``test_peft.py``."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_model, make_batch

from lora_jax import LoRAConfig, SequenceClassifier, merge, unmerge
from lora_jax.adapters import restore
from lora_jax.config import TrainConfig
from lora_jax.lora import (
    column_norm,
    delta_w,
    pissa_factors,
    pissa_init,
    pissa_to_lora,
    weight_norms,
)
from lora_jax.optim import FAST, count_params, loraplus_labels, make_optimizer, trainable_labels
from lora_jax.run import fit
from lora_jax.train import init_variables
from lora_jax.trees import flatten, perturb

DORA = LoRAConfig(rank=4, alpha=6.0, targets=("query", "value", "output"), dora=True)
PISSA = dataclasses.replace(DORA, dora=False, init="pissa")


def logits(model, variables, batch):
    return model.apply(variables, batch["input_ids"], batch["token_type_ids"],
                       batch["attention_mask"])


def created(cfg, lora, method):
    """A tiny model's base params and the variables ``method`` starts from (as ``fit`` does)."""
    _, base = init_model(cfg, None)
    net = SequenceClassifier(cfg, lora)
    return net, base["params"], init_variables(net, base["params"], method, jax.random.key(1))


def trained_like(variables, seed=2):
    """Adapters moved away from their start, as training would move them."""
    return {**variables, "lora": perturb(variables["lora"], jax.random.key(seed), 0.3)}


# --- DoRA ---------------------------------------------------------------------------------------


def test_dora_layer_matches_its_formula(tiny_cfg):
    """y = m * (x @ (W + s A@B)) / ||W + s A@B|| + b, the norm per output column."""
    net, _, v = created(tiny_cfg, DORA, "dora")
    v = trained_like(v)
    batch = make_batch(tiny_cfg)
    layer = ("bert", "encoder", "layer", "0", "attention", "self", "query")

    def at(tree):
        for k in layer:
            tree = tree[k]
        return tree

    p, ad = at(v["params"]), at(v["lora"])
    x = jax.random.normal(jax.random.key(5), (3, tiny_cfg.hidden_size))
    w = p["kernel"] + DORA.scale * ad["a"] @ ad["b"]
    want = (x @ w) * ad["m"] / jnp.sqrt(jnp.sum(w * w, axis=0)) + p["bias"]
    from lora_jax.lora import LoRADense

    dense = LoRADense(tiny_cfg.hidden_size, "query", DORA)
    got = dense.apply({"params": {"kernel": p["kernel"], "bias": p["bias"]},
                       "lora": {"a": ad["a"], "b": ad["b"], "m": ad["m"]}}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(ad["m"] - column_norm(w)).max()) > 1e-3  # m really differs from ||W'||
    assert logits(net, v, batch).shape == (4, tiny_cfg.num_labels)


def test_dora_starts_at_the_norm_of_w_so_the_model_equals_the_base(tiny_cfg):
    net, params, v = created(tiny_cfg, DORA, "dora")
    plain = SequenceClassifier(tiny_cfg)
    batch = make_batch(tiny_cfg)
    m = v["lora"]["bert"]["encoder"]["layer"]["1"]["output"]["dense"]["m"]
    kernel = params["bert"]["encoder"]["layer"]["1"]["output"]["dense"]["kernel"]
    np.testing.assert_array_equal(m, jnp.linalg.norm(kernel, axis=0))
    np.testing.assert_allclose(logits(net, v, batch), logits(plain, {"params": params}, batch),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("rslora", [False, True])
def test_dora_merged_equals_unmerged_with_alpha_not_equal_r(tiny_cfg, rslora):
    lora = dataclasses.replace(DORA, rslora=rslora)
    net, _, v = created(tiny_cfg, lora, "dora")
    v = trained_like(v)
    batch = make_batch(tiny_cfg)
    unmerged = logits(net, v, batch)
    merged = logits(SequenceClassifier(tiny_cfg), merge(v, lora), batch)
    assert float(jnp.abs(unmerged - logits(SequenceClassifier(tiny_cfg),
                                           {"params": v["params"]}, batch)).max()) > 1e-4
    np.testing.assert_allclose(merged, unmerged, rtol=1e-5, atol=1e-6)


def test_dora_merge_needs_the_magnitude_and_a_plain_merge_refuses_it(tiny_cfg):
    _, _, v = created(tiny_cfg, DORA, "dora")
    with pytest.raises(ValueError, match="has a magnitude m, but the config says dora=False"):
        merge(v, dataclasses.replace(DORA, dora=False))
    _, _, plain = created(tiny_cfg, dataclasses.replace(DORA, dora=False), "lora")
    with pytest.raises(ValueError, match="has no magnitude m, but the config says dora=True"):
        merge(plain, DORA)


def test_dora_unmerge_recovers_w_given_the_norms_and_says_why_it_needs_them(tiny_cfg):
    _, params, v = created(tiny_cfg, DORA, "dora")
    v = trained_like(v)
    merged = merge(v, DORA)
    with pytest.raises(ValueError, match="norms=weight_norms"):
        unmerge(merged, v["lora"], DORA)
    back = unmerge(merged, v["lora"], DORA, norms=weight_norms(v, DORA))
    for path, w in flatten(params).items():
        np.testing.assert_allclose(flatten(back["params"])[path], w, rtol=1e-5, atol=1e-6,
                                   err_msg=path)
    # the merged kernel's column norms are |m|, whatever W was: why the norms must be kept
    kernel = merged["params"]["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["value"]
    m = v["lora"]["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["value"]["m"]
    np.testing.assert_allclose(jnp.linalg.norm(kernel["kernel"], axis=0), jnp.abs(m), rtol=1e-5)


def test_dora_norm_is_a_constant_in_the_backward_pass(tiny_cfg):
    """With ||W + sAB|| detached, d/dm is x @ W' / ||W'|| and A, B get the gradient of
    (m/||W'||) * x @ (s A@B) only: checked against that closed form on one layer."""
    from lora_jax.lora import LoRADense

    d = tiny_cfg.hidden_size
    k = jax.random.split(jax.random.key(7), 5)
    w = jax.random.normal(k[0], (d, d)) * 0.1
    a = jax.random.normal(k[1], (d, 4)) * 0.1
    b = jax.random.normal(k[2], (4, d)) * 0.1
    m = jax.random.uniform(k[3], (d,), minval=0.5, maxval=1.5)
    x = jax.random.normal(k[4], (5, d))
    dense = LoRADense(d, "query", DORA)

    def loss(lora):
        y = dense.apply({"params": {"kernel": w, "bias": jnp.zeros(d)}, "lora": lora}, x)
        return jnp.sum(y ** 2) / 2

    g = jax.grad(loss)({"a": a, "b": b, "m": m})
    wp = w + DORA.scale * a @ b
    n = jnp.linalg.norm(wp, axis=0)
    y = (x @ wp) * (m / n)
    np.testing.assert_allclose(g["m"], jnp.sum(y * (x @ wp) / n, axis=0), rtol=1e-4)
    gy = y * (m / n)  # dL/d(x @ W') with the gain held constant
    np.testing.assert_allclose(g["b"], DORA.scale * (x @ a).T @ gy, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g["a"], DORA.scale * x.T @ (gy @ b.T), rtol=1e-4, atol=1e-6)


def test_dora_counts_one_magnitude_per_output_feature(tiny_cfg):
    _, _, lora_v = created(tiny_cfg, dataclasses.replace(DORA, dora=False), "lora")
    _, _, dora_v = created(tiny_cfg, DORA, "dora")
    d, ff, layers = tiny_cfg.hidden_size, tiny_cfg.intermediate_size, tiny_cfg.num_hidden_layers
    r = DORA.rank
    per_layer = 2 * (d * r + r * d) + (ff * r + r * d)  # query, value (d -> d), output (ff -> d)
    assert count_params(lora_v, "lora", include_head=False) == layers * per_layer
    assert count_params(dora_v, "dora", include_head=False) == layers * (per_layer + 3 * d)


# --- LoRA+ --------------------------------------------------------------------------------------


def test_loraplus_gives_b_ratio_times_a_s_first_update(tiny_cfg):
    """Adam's first step moves every weight by lr * g / (|g| + eps), i.e. lr where the gradient
    is far above eps: with LoRA+ every B moves by 16 lr, A (and the head) by lr."""
    lora = dataclasses.replace(DORA, dora=False)
    model, v = init_model(tiny_cfg, lora)
    v = {**v, "lora": perturb(v["lora"], jax.random.key(3), 0.1)}  # B != 0: A has a gradient
    batch = make_batch(tiny_cfg)

    def loss(variables):
        out = logits(model, variables, batch)
        return -jnp.mean(jax.nn.log_softmax(out)[jnp.arange(4), batch["label"]])

    grads = jax.grad(loss)(v)
    labels = trainable_labels(v, "lora")
    moved = {}
    for ratio in (None, 16.0):
        tx = make_optimizer(labels, learning_rate=1e-3, total_steps=10, warmup_ratio=0.0,
                            weight_decay=0.0, loraplus_ratio=ratio)
        updates, _ = tx.update(grads, tx.init(v), v)
        moved[ratio] = flatten(updates)
    g = flatten(grads)
    for path, u in moved[16.0].items():
        big = np.abs(np.asarray(g[path])) > 1e-5  # well above Adam's eps of 1e-8
        if not big.any():
            continue
        step = np.abs(np.asarray(u))[big]
        want = 16e-3 if path.startswith("lora/") and path.endswith("/b") else 1e-3
        if path.startswith("params/") and not path.startswith("params/classifier/"):
            want = 0.0
        np.testing.assert_allclose(step, want, rtol=2e-3, err_msg=path)
        np.testing.assert_allclose(np.abs(np.asarray(moved[None][path]))[big], 0 if want == 0
                                   else 1e-3, rtol=2e-3, err_msg=path)
    assert any(p.endswith("/b") for p in moved[16.0]) and any(p.endswith("/a") for p in moved[16.0])


def test_loraplus_is_a_label_of_the_same_multi_transform(tiny_cfg):
    _, v = init_model(tiny_cfg, dataclasses.replace(DORA, dora=False))
    groups = flatten(loraplus_labels(trainable_labels(v, "lora")))
    assert {p for p, lab in groups.items() if lab == FAST} == {
        p for p in flatten(v) if p.startswith("lora/") and p.endswith("/b")}
    tx = make_optimizer(trainable_labels(v, "lora"), loraplus_ratio=16.0)
    state_leaves = sum(x.size for x in jax.tree.leaves(tx.init(v)) if x.ndim > 0)
    plain = make_optimizer(trainable_labels(v, "lora"))
    assert state_leaves == sum(x.size for x in jax.tree.leaves(plain.init(v)) if x.ndim > 0)
    with pytest.raises(ValueError, match="no trainable LoRA B"):
        make_optimizer(trainable_labels({"params": v["params"]}, "head"), loraplus_ratio=16.0)


def test_loraplus_and_pissa_need_lora_layers_and_are_validated(tiny_base):
    for kw, field in ((dict(method="full", loraplus_ratio=16.0), "loraplus_ratio"),
                      (dict(method="bitfit", lora_init="pissa"), "lora_init"),
                      (dict(loraplus_ratio=0.0), "loraplus_ratio"),
                      (dict(loraplus_ratio=True), "loraplus_ratio"),
                      (dict(lora_init="svd"), "lora_init")):
        with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
            TrainConfig(model=str(tiny_base), **kw)
    assert TrainConfig(method="dora").lora_config().dora is True
    assert TrainConfig(lora_init="pissa").lora_config().init == "pissa"


# --- PiSSA --------------------------------------------------------------------------------------


def test_pissa_factors_are_the_principal_part_of_w(tiny_cfg):
    w = jax.random.normal(jax.random.key(0), (tiny_cfg.intermediate_size, tiny_cfg.hidden_size))
    a, b = pissa_factors(w, PISSA)
    u, s, vt = np.linalg.svd(np.asarray(w), full_matrices=False)
    r = PISSA.rank
    np.testing.assert_allclose(delta_w(a, b, PISSA), (u[:, :r] * s[:r]) @ vt[:r], atol=1e-4)
    # the root of the singular values is split evenly: A^T A = B B^T = diag(s_r) / scale
    np.testing.assert_allclose(a.T @ a, np.diag(s[:r]) / PISSA.scale, atol=1e-4)
    np.testing.assert_allclose(b @ b.T, np.diag(s[:r]) / PISSA.scale, atol=1e-4)


def test_pissa_starts_at_the_base_with_the_residual_frozen(tiny_cfg):
    net, params, v = created(tiny_cfg, PISSA, "lora")
    batch = make_batch(tiny_cfg)
    base = logits(SequenceClassifier(tiny_cfg), {"params": params}, batch)
    np.testing.assert_allclose(logits(net, v, batch), base, rtol=0, atol=1e-6)
    q = ("bert", "encoder", "layer", "0", "attention", "self", "query")
    res, orig, ad = v["params"], params, v["lora"]
    for k in q:
        res, orig, ad = res[k], orig[k], ad[k]
    np.testing.assert_allclose(res["kernel"] + delta_w(ad["a"], ad["b"], PISSA), orig["kernel"],
                               atol=1e-6)
    untouched = flatten(params)["bert/encoder/layer/0/attention/self/key/kernel"]
    np.testing.assert_array_equal(flatten(v["params"])["bert/encoder/layer/0/attention/self/"
                                                         "key/kernel"], untouched)
    # the same kernel gives the same factors: the residual can be rebuilt from the base alone
    again = pissa_init({"params": params, "lora": v["lora"]}, PISSA)
    for p, x in flatten(again).items():
        np.testing.assert_array_equal(x, flatten(v)[p], err_msg=p)


@pytest.mark.parametrize("lora", [PISSA, dataclasses.replace(PISSA, rslora=True),
                                  dataclasses.replace(PISSA, dora=True)],
                         ids=["plain", "rslora", "dora"])
def test_pissa_converted_to_rank_2r_gives_the_trained_model_on_the_original_base(tiny_cfg,
                                                                               lora):
    net, params, v = created(tiny_cfg, lora, "dora" if lora.dora else "lora")
    v = trained_like(v)
    batch = make_batch(tiny_cfg)
    plain_lora, plain = pissa_to_lora(v["lora"], params, lora)
    assert plain.rank == 2 * lora.rank and plain.init == "kaiming"
    assert plain.scale == pytest.approx(lora.scale, rel=1e-12)
    converted = logits(SequenceClassifier(tiny_cfg, plain), {"params": params,
                                                             "lora": plain_lora}, batch)
    np.testing.assert_allclose(converted, logits(net, v, batch), rtol=1e-5, atol=1e-6)


def test_pissa_rank_is_checked_against_the_doubled_rank(tiny_base):
    from lora_jax.models import check_rank
    from lora_jax.pretrained import load_config

    cfg = load_config(tiny_base)
    half = cfg.hidden_size // 2
    check_rank(LoRAConfig(rank=half, init="pissa"), cfg)
    with pytest.raises(ValueError, match=rf"plain LoRA of rank {2 * (half + 1)}.*--rank <= "):
        check_rank(LoRAConfig(rank=half + 1, init="pissa"), cfg)


# --- trained end to end -------------------------------------------------------------------------


def run_config(tiny_base, **kw):
    base = dict(task="sst2", model=str(tiny_base), epochs=1, batch_size=16, max_length=16,
                rank=4, alpha=6.0, learning_rate=1e-2, max_steps=3, seed=0)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("kw", [dict(method="dora"), dict(loraplus_ratio=16.0),
                                dict(lora_init="pissa"),
                                dict(method="dora", lora_init="pissa", loraplus_ratio=4.0)],
                         ids=["dora", "loraplus", "pissa", "dora-pissa-loraplus"])
def test_training_keeps_frozen_weights_bit_identical_and_state_only_trainable(
        kw, tiny_base, tiny_glue, tmp_path):
    cfg = run_config(tiny_base, **kw)
    result = fit(cfg, tmp_path / "run", data_dir=tiny_glue, progress=False)
    from lora_jax.pretrained import load_pretrained

    pre = load_pretrained(str(tiny_base), num_labels=2, seed=cfg.seed)
    net = SequenceClassifier(pre.config, cfg.lora_config())
    start = init_variables(net, pre.params, cfg.method, jax.random.key(0))
    end = flatten(result.state.variables)
    labels = flatten(trainable_labels(result.state.variables, cfg.method))
    frozen = [p for p, lab in labels.items() if lab == "frozen"]
    assert frozen and all(np.array_equal(end[p], flatten(start)[p]) for p in frozen)
    moved = [p for p, lab in labels.items() if lab == "trainable"
             and not np.array_equal(end[p], flatten(start).get(p, end[p] + 1))]
    assert any(p.startswith("lora/") for p in moved)
    if cfg.method == "dora":
        assert any(p.endswith("/m") for p in moved)  # the magnitude trains
    # Adam's two moments exist for exactly the trainable leaves (m included for DoRA)
    moments = [x for x in jax.tree.leaves(result.state.opt_state) if x.ndim > 0]
    trainable_sizes = sorted(end[p].size for p, lab in labels.items() if lab == "trainable")
    assert sorted(x.size for x in moments) == sorted(trainable_sizes * 2)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_a_pissa_adapter_file_is_a_rank_2r_lora_that_reproduces_the_run(method, tiny_base,
                                                                         tiny_glue, tmp_path):
    cfg = run_config(tiny_base, method=method, lora_init="pissa")
    result = fit(cfg, tmp_path / "run", data_dir=tiny_glue, progress=False)
    net, variables, meta, pre = restore(tmp_path / "run" / "adapter.safetensors")
    assert net.lora.rank == 8 and net.lora.init == "kaiming" and net.lora.alpha == 12.0
    assert meta["trained_as"]["lora_init"] == "pissa" and meta["trained_as"]["rank"] == 4
    # the file applies to the checkpoint as it is: its kernels are the original ones
    for p, x in flatten(pre.params).items():
        if p.endswith("/kernel") and not p.startswith("classifier/"):
            np.testing.assert_array_equal(flatten(variables["params"])[p], x, err_msg=p)
    trained_net = SequenceClassifier(pre.config, cfg.lora_config())
    batch = make_batch(net.cfg, length=10)
    np.testing.assert_allclose(logits(net, variables, batch),
                               logits(trained_net, result.state.variables, batch),
                               rtol=1e-5, atol=1e-5)
