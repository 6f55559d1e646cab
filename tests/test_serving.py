"""Mixed-adapter batches: each example with its own adapter, in one batched call."""

import jax
import numpy as np
import pytest
from conftest import init_model, make_batch

from lora_jax import LoRAConfig, ModelConfig
from lora_jax.serving import adapter_part, check_ids, mixed_logits, stack_adapters
from lora_jax.train import predict

LORA = LoRAConfig(rank=4, alpha=16.0, targets=("query", "value", "intermediate"))


def adapters(cfg, n):
    """n different trained-looking adapters (random A, B and heads) on one frozen base."""
    model, base = init_model(cfg, LORA, seed=0)
    out = []
    for i in range(n):
        leaves, treedef = jax.tree.flatten(adapter_part(base))
        keys = jax.random.split(jax.random.key(100 + i), len(leaves))
        moved = [x + 0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves,
                                                                          strict=True)]
        out.append(jax.tree.unflatten(treedef, moved))
    params = {k: v for k, v in base["params"].items() if k != "classifier"}
    return model, params, out


def test_each_row_gets_exactly_its_own_adapters_output():
    cfg = ModelConfig.tiny(num_labels=3)
    model, params, parts = adapters(cfg, 3)
    batch = make_batch(cfg, batch=6)
    ids = np.array([2, 0, 1, 1, 0, 2])
    mixed = mixed_logits(model.apply, params, stack_adapters(parts), check_ids(ids, 3, 6),
                         {k: batch[k] for k in ("input_ids", "token_type_ids",
                                                "attention_mask")})
    alone = []
    for k, part in enumerate(parts):
        variables = {"params": {**params, "classifier": part["classifier"]}, "lora": part["lora"]}
        alone.append(np.asarray(predict(model.apply, variables, batch)))  # all rows, adapter k
        rows = ids == k
        np.testing.assert_allclose(np.asarray(mixed)[rows], alone[k][rows], atol=2e-5, rtol=1e-5)
    # the adapters really differ, so a wrong route would show
    assert np.abs(alone[0] - alone[1]).min() > 1e-3 and np.abs(alone[1] - alone[2]).min() > 1e-3


def test_stacking_adapters_of_different_rank_names_the_leaf():
    cfg = ModelConfig.tiny()
    _, _, parts = adapters(cfg, 1)
    _, other = init_model(cfg, LoRAConfig(rank=2, alpha=4.0, targets=LORA.targets))
    with pytest.raises(ValueError, match=r"^rte: lora/.*/a has shape \(32, 2\), sst2 has "
                                         r"\(32, 4\)"):
        stack_adapters([parts[0], adapter_part(other)], ["sst2", "rte"])


def test_stacking_adapters_with_other_targets_is_refused():
    cfg = ModelConfig.tiny()
    _, _, parts = adapters(cfg, 1)
    _, other = init_model(cfg, LoRAConfig(rank=4, alpha=16.0, targets=("query",)))
    with pytest.raises(ValueError, match="same targets"):
        stack_adapters([parts[0], adapter_part(other)])


@pytest.mark.parametrize("ids, message", [
    ([0, 3], "out of range"), ([0, -1], "out of range"), ([0], "one per row"),
    ([0.0, 1.0], "integers"),
])
def test_bad_adapter_ids(ids, message):
    with pytest.raises(ValueError, match=message):
        check_ids(ids, n_adapters=3, batch_size=2)


def test_load_stacked_adapter_files_route_rows_like_restore(tiny_base, tiny_glue, tmp_path):
    from lora_jax.adapters import restore
    from lora_jax.config import TrainConfig
    from lora_jax.run import fit
    from lora_jax.serving import load_stacked

    paths = []
    for task in ("sst2", "rte"):
        cfg = TrainConfig(task=task, method="lora", model=str(tiny_base), epochs=1,
                          batch_size=16, max_length=16, rank=4, learning_rate=1e-2)
        fit(cfg, tmp_path / task, data_dir=tiny_glue, progress=False)
        paths.append(tmp_path / task / "adapter.safetensors")
    net, base, stacked, metas = load_stacked(paths)
    assert [m["task"] for m in metas] == ["sst2", "rte"]
    batch = make_batch(ModelConfig.tiny(vocab_size=29), batch=4, length=10)
    batch = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    ids = check_ids([1, 0, 0, 1], 2, 4)
    mixed = np.asarray(mixed_logits(net.apply, base, stacked, ids, batch))
    for k, path in enumerate(paths):
        model, variables, _, _ = restore(path)
        alone = np.asarray(predict(model.apply, variables, batch))
        np.testing.assert_allclose(mixed[np.asarray(ids) == k], alone[np.asarray(ids) == k],
                                   atol=2e-5)

    cfg = TrainConfig(task="sst2", method="bitfit", model=str(tiny_base), epochs=1,
                      batch_size=16, max_length=16)
    fit(cfg, tmp_path / "bitfit", data_dir=tiny_glue, progress=False)
    with pytest.raises(ValueError, match="only LoRA adapters can be stacked"):
        load_stacked([paths[0], tmp_path / "bitfit" / "adapter.safetensors"])
