"""The training loop end to end on a tiny model and tiny data: every method, adapter files,
resume, and clear errors that leave nothing half-written."""

import dataclasses
import json
import os
import re

import numpy as np
import pytest
from conftest import write_tiny_checkpoint

from lora_jax.adapters import restore
from lora_jax.checkpoint import CheckpointFileError, apply_adapter, read_adapter
from lora_jax.config import TrainConfig
from lora_jax.data import GlueDataError
from lora_jax.run import TrainingDiverged, fit
from lora_jax.train import evaluate


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
    from lora_jax.trees import flatten

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
    with open(tmp_path / "b" / "metrics.jsonl", "a") as log:  # a kill after the save: a line
        log.write('{"step": 5, "epoch": 0, "loss": 0.5}\n{"step": 6, "ep')  # and half a line
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


def test_a_state_saved_before_a_config_field_existed_still_resumes(tiny_base, tiny_glue,
                                                                  tmp_path):
    """A run started by an older lora_jax has no entry for a newer field (``quantize``,
    ``lora_init``, ...): it ran with the default, so it resumes; a real difference still fails."""
    from lora_jax.checkpoint import _read, _write

    cfg = config(tiny_base, method="lora")
    straight = fit(cfg, tmp_path / "straight", data_dir=tiny_glue, progress=False)
    fit(cfg, tmp_path / "r", data_dir=tiny_glue, progress=False, stop_after_steps=2)
    state = tmp_path / "r" / "state.safetensors"
    tensors, meta = _read(state)
    for field in ("quantize", "lora_init", "loraplus_ratio"):
        del meta["config"][field]
    _write(state, tensors, {k: v for k, v in meta.items() if k != "format"})
    resumed = fit(cfg, tmp_path / "r", data_dir=tiny_glue, progress=False, resume=True)
    assert resumed.losses == straight.losses[2:]


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


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_base, tiny_glue,
                                                                         tmp_path):
    cfg = config(tiny_base, method="full", learning_rate=1e6, epochs=1, save_every=1)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at step \d+") as e:
        fit(cfg, run, data_dir=tiny_glue, progress=False)
    step = int(re.search(r"at step (\d+)", str(e.value)).group(1))
    assert step >= 2, e.value  # so that a good state was saved before it
    state_file = run / "state.safetensors"
    assert f"the last good state (step {step - 1}) is in {state_file}" in str(e.value)
    # the checkpoint on disk is the last good one: it loads, and diverges again at the same step
    with pytest.raises(TrainingDiverged, match=rf"at step {step};"):
        fit(cfg, run, data_dir=tiny_glue, progress=False, resume=True)


def test_nan_gradient_with_a_finite_loss_stops_and_the_previous_checkpoint_resumes(
        tiny_base, tiny_glue, tmp_path, monkeypatch):
    """An injected NaN in step 3's gradient only: its loss is finite, its update would poison
    every weight. The run stops naming the step; the state of step 2 on disk still trains on."""
    import jax.numpy as jnp

    import lora_jax.run as run_mod
    import lora_jax.train as train_mod

    real_step, real_forward = train_mod.train_step, train_mod.forward

    def poisoned_step(state, batch):
        return real_step(state, {**batch, "poison": (state.step == 2).astype(jnp.float32)})

    def poisoned_forward(apply_fn, variables, batch, **kw):
        logits = real_forward(apply_fn, variables, batch, **kw)
        if "poison" not in batch:
            return logits
        # adds exactly 0; its derivative is 0 * inf = NaN when poisoned (sqrt'(0) = inf)
        return logits + 0.0 * jnp.sqrt(0.0 * logits + 1.0 - batch["poison"])

    monkeypatch.setattr(run_mod, "train_step", poisoned_step)
    monkeypatch.setattr(train_mod, "forward", poisoned_forward)
    cfg = config(tiny_base, method="lora", epochs=1, save_every=1)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"^gradient norm became nan at step 3; that state "
                                               r"was not saved; the last good state \(step 2\)"):
        fit(cfg, run, data_dir=tiny_glue, progress=False)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]  # step 3's finite loss was never logged
    monkeypatch.undo()
    resumed = fit(cfg, run, data_dir=tiny_glue, progress=False, resume=True)
    assert [s for s, _ in resumed.losses] == [3, 4, 5, 6]
    assert all(np.isfinite(loss) for _, loss in resumed.losses)


def test_max_grad_norm_clips_the_gradient_before_adam(tiny_base, tiny_glue, tmp_path,
                                                     monkeypatch):
    """Clipped to 1e-12, the gradient is far below Adam's eps: the first update all but
    vanishes, where an unclipped Adam step moves each weight by about the learning rate. And
    ``fit`` hands ``max_grad_norm`` to the optimizer."""
    import jax.numpy as jnp

    import lora_jax.train as train_mod
    from lora_jax.optim import make_optimizer, trainable_labels

    params = {"params": {"classifier": {"kernel": jnp.ones((4, 2))}}}
    grads = {"params": {"classifier": {"kernel": jnp.full((4, 2), 10.0)}}}
    moved = {}
    for clip in (None, 1e-12):
        tx = make_optimizer(trainable_labels(params, "head"), learning_rate=1e-2,
                            total_steps=10, warmup_ratio=0.0, weight_decay=0.0,
                            max_grad_norm=clip)
        updates, _ = tx.update(grads, tx.init(params), params)
        moved[clip] = float(jnp.abs(updates["params"]["classifier"]["kernel"]).max())
    assert moved[None] == pytest.approx(1e-2, rel=1e-3)
    assert moved[1e-12] < 1e-3 * moved[None]

    seen = {}

    class Stop(Exception):
        pass

    def spy(labels, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(train_mod, "make_optimizer", spy)
    with pytest.raises(Stop):
        fit(config(tiny_base, max_grad_norm=0.5), tmp_path, data_dir=tiny_glue, progress=False)
    assert seen["max_grad_norm"] == 0.5


def test_log_lines_past_the_saved_position_are_dropped_on_resume(tmp_path):
    from lora_jax.run import _truncate_log

    log = tmp_path / "metrics.jsonl"
    steps = [{"step": i, "epoch": 0, "loss": 1.0 / i} for i in range(1, 7)]
    evaluation = {"epoch": 1, "step": 6, "eval": {"accuracy": 0.5, "loss": 0.7}}
    text = "".join(json.dumps(x) + "\n" for x in [*steps, evaluation]) + '{"step": 7, "epo'
    # the state was saved after step 6, before epoch 1's evaluation: that evaluation is redone
    log.write_text(text)
    assert _truncate_log(log, 6, epochs_done=0) == []
    assert log.read_text() == "".join(json.dumps(x) + "\n" for x in steps)
    log.write_text(text)
    assert _truncate_log(log, 6, epochs_done=1) == [evaluation]
    log.write_text('{"step": 1, "epoch": 0, "loss": 1.0}\nnot json\n{"step": 2}\n')
    with pytest.raises(CheckpointFileError, match=r"metrics.jsonl:2: not a JSON record"):
        _truncate_log(log, 2, epochs_done=0)


def test_a_full_disk_fails_before_training_naming_the_directory_and_bytes(
        tiny_base, tiny_glue, tmp_path, monkeypatch, capsys):
    import shutil

    from lora_jax.cli import main
    from lora_jax.files import RunDirError

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=50_000))
    run = tmp_path / "run"
    with pytest.raises(RunDirError, match=rf"^{re.escape(str(run))}: 50,000 bytes free, but this "
                                          r"run needs about [\d,]+ \(state.safetensors of "
                                          r"[\d,]+ bytes, written beside the previous copy"):
        fit(config(tiny_base, method="full"), run, data_dir=tiny_glue, progress=False)
    assert sorted(p.name for p in run.iterdir()) == []  # no config, log or state: nothing ran
    code = main(["train", "--model", str(tiny_base), "--data-dir", str(tiny_glue), "--quiet",
                 "--max-length", "16", "--batch-size", "16", "--out", str(run)])
    assert code == 2 and f"error: {run}: 50,000 bytes free" in capsys.readouterr().err


def test_a_disk_that_refuses_the_probe_fails_before_training(tiny_base, tiny_glue, tmp_path,
                                                              monkeypatch):
    """disk_usage can be wrong (quotas, network file systems): the probe really writes."""
    import errno

    from lora_jax import files
    from lora_jax.files import RunDirError

    real_fill = files._fill

    def quota(fd, nbytes):
        if nbytes > 1:  # the small writability probe passes, the state-sized one does not
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        real_fill(fd, nbytes)

    monkeypatch.setattr(files, "_fill", quota)
    run = tmp_path / "run"
    with pytest.raises(RunDirError, match=r"run: writing a [\d,]+-byte test file failed \(Disk "
                                          r"quota exceeded\); this run needs about [\d,]+ bytes"):
        fit(config(tiny_base), run, data_dir=tiny_glue, progress=False)
    assert not (run / "metrics.jsonl").exists() and not list(run.glob(".*"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_run_directory_fails_at_once(tiny_base, tiny_glue, tmp_path):
    from lora_jax.files import RunDirError

    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o500)
    try:
        with pytest.raises(RunDirError, match=r"run: cannot write in the run directory "
                                              r"\(Permission denied\)"):
            fit(config(tiny_base), run, data_dir=tiny_glue, progress=False)
    finally:
        run.chmod(0o700)


def test_an_unwritable_run_directory_fails_at_once(tiny_base, tiny_glue, tmp_path, monkeypatch,
                                                   capsys):
    """The same as a read-only directory, simulated so that it also runs as root."""
    import errno

    from lora_jax import files
    from lora_jax.cli import main
    from lora_jax.files import RunDirError

    run = tmp_path / "run"
    real_open = os.open

    def deny(path, flags, *args, **kw):
        if os.path.dirname(os.fspath(path)) == str(run) and flags & os.O_WRONLY:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(files.os, "open", deny)
    with pytest.raises(RunDirError, match=rf"^{re.escape(str(run))}: cannot write in the run "
                                          r"directory \(Permission denied\)"):
        fit(config(tiny_base), run, data_dir=tiny_glue, progress=False)
    assert main(["train", "--out", str(run), "--model", str(tiny_base)]) == 2
    assert f"{run}: cannot write in the run directory" in capsys.readouterr().err


def test_bad_train_config_names_the_field(tiny_base):
    for kw, field in [({"method": "lroa"}, "method"), ({"epochs": 0}, "epochs"),
                      ({"batch_size": -1}, "batch_size"), ({"rank": 0}, "rank"),
                      ({"targets": ("qeury",)}, "targets"),
                      ({"learning_rate": 0.0}, "learning_rate")]:
        with pytest.raises(ValueError, match=field):
            config(tiny_base, **kw)
    assert np.isclose(config(tiny_base, method="full").lr, 5e-5)


def test_target_dims_are_the_kernel_shapes_of_every_lora_target():
    """``check_rank`` reads layer widths from ``layer_dims``; they must be the model's own."""
    from lora_jax.models import LORA_TARGETS, ModelConfig
    from lora_jax.models import layer_dims as target_dims
    from lora_jax.report import abstract_variables
    from lora_jax.trees import flatten

    cfg = ModelConfig.tiny(intermediate_size=48)
    kernels = flatten(abstract_variables(cfg, None)["params"])
    where = {"query": "attention/self/query", "key": "attention/self/key",
             "value": "attention/self/value", "attention_output": "attention/output/dense",
             "intermediate": "intermediate/dense", "output": "output/dense"}
    dims = target_dims(cfg)
    assert set(dims) == set(LORA_TARGETS) == set(where) | {"pooler"}
    for role, sub in where.items():
        assert kernels[f"bert/encoder/layer/1/{sub}/kernel"].shape == dims[role], role
    assert kernels["bert/pooler/dense/kernel"].shape == dims["pooler"]
    assert "pooler" not in target_dims(cfg.replace(model_type="roberta"))  # RoBERTa has none


def test_state_nbytes_is_the_size_save_state_writes(tiny_cfg, tmp_path):
    """The disk check sizes its probe with ``state_nbytes`` before any state is saved: never
    less than the file, at most a header's few KB more."""
    import jax
    from conftest import init_model

    from lora_jax import LoRAConfig, create_train_state, make_optimizer
    from lora_jax.checkpoint import save_state, state_nbytes
    from lora_jax.optim import trainable_labels

    for method, lora in (("lora", LoRAConfig(rank=4)), ("full", None)):
        model, variables = init_model(tiny_cfg, lora)
        tx = make_optimizer(trainable_labels(variables, method), total_steps=10)
        state = create_train_state(model.apply, variables, method, tx, jax.random.key(0))
        meta = {"config": {"rank": 4}, "base_fingerprint": "0" * 16}
        size = save_state(tmp_path / "s.safetensors", state, {"epoch": 0, "batch": 0},
                          meta).stat().st_size
        assert size <= state_nbytes(state, meta) <= 1.05 * size + 4096, method


def test_a_killed_writes_temporary_files_are_removed_and_nothing_else(tmp_path):
    import tempfile

    from lora_jax.files import PROBE_NAME, remove_stale_temps

    _, stale = tempfile.mkstemp(dir=tmp_path, prefix=".state.safetensors.", suffix=".tmp")
    (tmp_path / PROBE_NAME).write_text("")
    for keep in (".notes.tmp", "data.tmp", "state.safetensors"):
        (tmp_path / keep).write_text("mine")
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted([os.path.basename(stale), PROBE_NAME])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp", "data.tmp",
                                                           "state.safetensors"]


def test_resume_after_the_last_step_but_before_its_evaluation_still_evaluates(
        tiny_base, tiny_glue, tmp_path):
    """A kill between the last step's save and the epoch's evaluation (found by killing at
    random moments): the resumed run owes that evaluation, though no step is left."""
    cfg = config(tiny_base, method="lora", epochs=1)
    straight = fit(cfg, tmp_path / "a", data_dir=tiny_glue, progress=False)
    first = fit(cfg, tmp_path / "b", data_dir=tiny_glue, progress=False, stop_after_steps=6)
    assert first.stopped_early and first.epochs == []  # 96 / 16 = 6 steps: all done, no eval
    second = fit(cfg, tmp_path / "b", data_dir=tiny_glue, progress=False, resume=True)
    assert second.losses == [] and second.final == straight.final is not None
    log = (tmp_path / "b" / "metrics.jsonl").read_text()
    assert log == (tmp_path / "a" / "metrics.jsonl").read_text()


def test_a_stalled_window_does_not_set_the_runs_examples_per_second():
    """A window during which the process was stopped (SIGSTOP, a suspended laptop) is left out
    of examples/s; a window of long batches is not mistaken for one."""
    from pathlib import Path

    from lora_jax.run import RunResult

    def window(seconds, length):  # 10 steps of 32 rows
        return {"first_step": 1, "steps": 10, "seconds": seconds, "examples": 320,
                "tokens": 320 * length, "rows": 320}

    steady = [window(1.0, 32), window(1.1, 32), window(4.0, 128), window(0.9, 32)]
    result = RunResult(Path("."), [], [], None, None, steady)
    t = result.step_time()
    assert t["stalled_windows"] == 0  # the 128-token window costs 4x per step, not per token
    assert np.isclose(t["examples_per_s"], 4 * 320 / 7.0)
    result.windows = steady + [window(600.0, 32)]  # stopped for ten minutes
    t = result.step_time()
    assert t["stalled_windows"] == 1 and np.isclose(t["examples_per_s"], 4 * 320 / 7.0)
    assert np.isclose(t["mean_step_length"], (4 * 32 + 128) / 5)
