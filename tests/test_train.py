"""The training loop end to end on a tiny model and tiny data: every method, adapter files,
resume, and clear errors that leave nothing half-written."""

import dataclasses
import json

import numpy as np
import pytest
from conftest import write_tiny_checkpoint

from lora_jax.checkpoint import CheckpointFileError, apply_adapter, read_adapter
from lora_jax.data import GlueDataError
from lora_jax.train import TrainConfig, TrainingDiverged, evaluate, fit, restore


def config(tiny_base, **kw):
    base = dict(task="sst2", model=str(tiny_base), epochs=2, batch_size=16, max_length=16,
                rank=4, adapter_size=8, seed=0)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("method", ["full", "lora", "bitfit", "head", "adapter"])
def test_two_epochs_write_metrics_checkpoint_and_an_adapter_that_reproduces_eval(
        method, tiny_base, tiny_glue, tmp_path):
    cfg = config(tiny_base, method=method, learning_rate=1e-2 if method != "full" else 1e-3)
    result = fit(cfg, tmp_path / "run", data_dir=tiny_glue, progress=False)
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "adapter.safetensors", "state.safetensors",
                 "summary.json"):
        assert (run / name).is_file(), name
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines if "eval" in x] == [1, 2]
    assert sum("loss" in x and "eval" not in x for x in lines) == 2 * 6  # 96 / 16 per epoch
    assert result.final["epoch"] == 2 and result.best["epoch"] in (1, 2)
    # the adapter file holds exactly the trainable leaves
    tensors, meta = read_adapter(run / "adapter.safetensors")
    assert meta["method"] == method and meta["task"] == "sst2"
    from lora_jax.optim import count_params

    assert sum(v.size for v in tensors.values()) == count_params(result.state.variables, method)
    model, variables, _, _ = restore(run / "adapter.safetensors")
    from lora_jax.data import Batcher, choose_buckets, encode, load_split
    from lora_jax.pretrained import load_tokenizer

    tok = load_tokenizer(tiny_base, max_length=16)
    dev = encode(tok, load_split("sst2", "dev", data_dir=tiny_glue))
    scores = evaluate(model.apply, variables, Batcher(dev, 64, choose_buckets(dev.lengths, 16),
                                                      shuffle=False), result_task())
    assert scores == result.final["eval"]


def result_task():
    from lora_jax.data import get_task

    return get_task("sst2")


def test_lora_learns_a_tiny_task(tiny_base, tiny_glue, tmp_path):
    """The words give the label away; a random tiny encoder needs a few dozen steps."""
    cfg = config(tiny_base, method="lora", learning_rate=3e-2, epochs=8, warmup_ratio=0.0)
    result = fit(cfg, tmp_path / "run", data_dir=tiny_glue, progress=False)
    assert result.best["eval"]["accuracy"] > 0.8
    assert result.losses[-1][1] < 0.5 * result.losses[0][1]


def test_regression_task_trains_with_mse(tiny_base, tiny_glue, tmp_path):
    cfg = config(tiny_base, task="stsb", method="lora", learning_rate=3e-2, epochs=4,
                 warmup_ratio=0.0)
    result = fit(cfg, tmp_path / "run", data_dir=tiny_glue, progress=False)
    evals = [e["eval"] for e in result.epochs]
    assert set(evals[0]) == {"pearson", "spearman", "loss"}
    assert evals[-1]["loss"] < 0.7 * evals[0]["loss"]


def test_a_fresh_regression_head_starts_at_the_mean_training_label(tiny_base, tiny_glue,
                                                                    tmp_path):
    """The first step's loss is then about the labels' variance, not their mean square."""
    from lora_jax.data import load_split

    y = load_split("stsb", "train", data_dir=tiny_glue).labels
    cfg = config(tiny_base, task="stsb", method="lora", epochs=1)
    result = fit(cfg, tmp_path / "run", data_dir=tiny_glue, progress=False, stop_after_steps=1)
    assert result.info["head_bias_start"] == pytest.approx(float(np.mean(y)))
    assert np.var(y) < 0.5 * np.mean(y ** 2)  # the check below can tell the two apart
    assert result.losses[0][1] == pytest.approx(np.var(y), rel=0.3)


def test_start_head_at_sets_only_the_output_bias():
    import jax

    from lora_jax.models import ModelConfig, init_head, start_head_at
    from lora_jax.optim import flatten

    for cfg in (ModelConfig.tiny(num_labels=1), ModelConfig.tiny(num_labels=1,
                                                                  model_type="roberta")):
        params = {"classifier": init_head(cfg, jax.random.key(0))}
        moved = flatten(start_head_at(params, cfg, 2.5))
        before = flatten(params)
        changed = [p for p in before if not np.array_equal(before[p], moved[p])]
        assert len(changed) == 1 and changed[0].endswith("bias"), changed
        assert np.all(np.asarray(moved[changed[0]]) == 2.5)


def test_resume_gives_the_same_losses_as_a_straight_run(tiny_base, tiny_glue, tmp_path):
    cfg = config(tiny_base, method="lora", learning_rate=1e-2, lora_dropout=0.1)
    straight = fit(cfg, tmp_path / "a", data_dir=tiny_glue, progress=False)
    first = fit(cfg, tmp_path / "b", data_dir=tiny_glue, progress=False, stop_after_steps=4)
    assert first.stopped_early and len(first.losses) == 4
    second = fit(cfg, tmp_path / "b", data_dir=tiny_glue, progress=False, resume=True)
    assert first.losses + second.losses == straight.losses
    assert second.final["eval"] == straight.final["eval"]
    log = (tmp_path / "b" / "metrics.jsonl").read_text()
    assert log == (tmp_path / "a" / "metrics.jsonl").read_text()


def test_resume_with_a_different_config_names_the_difference(tiny_base, tiny_glue, tmp_path):
    cfg = config(tiny_base, method="lora")
    fit(cfg, tmp_path / "r", data_dir=tiny_glue, progress=False, stop_after_steps=2)
    with pytest.raises(CheckpointFileError, match="saved run differs from this one: config"):
        fit(dataclasses.replace(cfg, rank=2), tmp_path / "r", data_dir=tiny_glue,
            progress=False, resume=True)
    with pytest.raises(FileNotFoundError, match="no .*state.safetensors to resume from"):
        fit(cfg, tmp_path / "empty", data_dir=tiny_glue, progress=False, resume=True)


def test_adapter_on_another_base_model_is_refused(tiny_base, tiny_glue, tmp_path):
    cfg = config(tiny_base, method="lora", epochs=1)
    fit(cfg, tmp_path / "run", data_dir=tiny_glue, progress=False)
    other = write_tiny_checkpoint(tmp_path / "other", seed=1)
    with pytest.raises(CheckpointFileError, match=r"adapter was trained on base model .* "
                                                  r"fingerprint .* but the base given has"):
        restore(tmp_path / "run" / "adapter.safetensors", model=str(other))


def test_corrupted_or_mismatched_adapter_files(tiny_base, tiny_glue, tmp_path):
    cfg = config(tiny_base, method="lora", epochs=1)
    result = fit(cfg, tmp_path / "run", data_dir=tiny_glue, progress=False)
    path = tmp_path / "run" / "adapter.safetensors"
    blob = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointFileError, match="bad.safetensors: not a readable safetensors"):
        restore(bad)
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointFileError, match="not a readable safetensors"):
        restore(bad)
    # same file, but loaded as if it were a rank-2 adapter: the shapes do not fit
    _, meta = read_adapter(path)
    wrong = dict(result.state.variables)
    wrong["lora"] = {k: v for k, v in wrong["lora"].items()}
    template = restore(path)[1]
    template["lora"] = _shrink(template["lora"])
    with pytest.raises(CheckpointFileError, match=r"tensor lora/.*/a is float32\(32, 4\), "
                                                  r"expected float32\(32, 2\)"):
        apply_adapter(path, template, meta["base_fingerprint"], template)


def _shrink(tree):
    if isinstance(tree, dict):
        return {k: _shrink(v) for k, v in tree.items()}
    return tree[:, :2] if tree.shape[-1] == 4 else tree[:2]


def test_bad_data_fails_before_training_and_writes_no_adapter(tiny_base, tiny_glue, tmp_path):
    (tmp_path / "glue" / "SST-2").mkdir(parents=True)
    (tmp_path / "glue" / "SST-2" / "train.tsv").write_text("sentence\tlabel\nok\t1\nbroken\n")
    (tmp_path / "glue" / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nok\t1\n")
    with pytest.raises(GlueDataError, match=r"train.tsv:3: expected at least 2"):
        fit(config(tiny_base), tmp_path / "run", data_dir=tmp_path / "glue", progress=False)
    assert not (tmp_path / "run" / "adapter.safetensors").exists()
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_nan_loss_stops_with_the_step(tiny_base, tiny_glue, tmp_path):
    cfg = config(tiny_base, method="full", learning_rate=1e6, epochs=1)
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at step \d+"):
        fit(cfg, tmp_path / "run", data_dir=tiny_glue, progress=False)


def test_bad_train_config_names_the_field(tiny_base):
    for kw, field in [({"method": "lroa"}, "method"), ({"epochs": 0}, "epochs"),
                      ({"batch_size": -1}, "batch_size"), ({"rank": 0}, "rank"),
                      ({"targets": ("qeury",)}, "targets"),
                      ({"learning_rate": 0.0}, "learning_rate")]:
        with pytest.raises(ValueError, match=field):
            config(tiny_base, **kw)
    assert np.isclose(config(tiny_base, method="full").lr, 5e-5)
