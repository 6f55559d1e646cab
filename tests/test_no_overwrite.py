"""Nothing a user already has is overwritten, and nothing misleading is printed: one table per
promise. Every command that writes refuses a path holding what it did not write (and the
directories it reads, whatever the flag), ``train`` refuses a directory holding a run without
``--resume`` or ``--overwrite``, ``eval`` refuses another task's data unless asked, the config
dataclasses check types before values, and written files get the umask's mode."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from lora_jax import LoRAConfig, ModelConfig, TrainConfig
from lora_jax.cli import main
from lora_jax.files import MANIFEST, OutputExistsError, check_output_dir
from lora_jax.run import fit

TRAIN = ["--max-length", "16", "--batch-size", "16", "--epochs", "1", "--max-steps", "2",
         "--quiet"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes): what a refusal must leave alone."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def run_cli(args, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def world(tiny_base, tiny_glue, tmp_path_factory):
    """A private copy of the tiny base, a LoRA run trained on it, a merged model and a PEFT
    export of that run, all written by the commands under test."""
    root = tmp_path_factory.mktemp("world")
    base = shutil.copytree(tiny_base, root / "base")
    cfg = TrainConfig(task="sst2", model=str(base), epochs=1, max_steps=2, batch_size=16,
                      max_length=16, rank=4, alpha=12.0)
    fit(cfg, root / "run", data_dir=tiny_glue, progress=False)
    adapter = root / "run" / "adapter.safetensors"
    assert main(["merge", str(adapter), "--out", str(root / "merged")]) == 0
    assert main(["export-peft", str(adapter), "--out", str(root / "peft")]) == 0
    assert main(["import-peft", str(root / "peft"), "--out", str(root / "imported.safetensors"),
                 "--model", str(base), "--task", "sst2"]) == 0
    return {"root": root, "base": base, "run": root / "run", "adapter": adapter,
            "merged": root / "merged", "peft": root / "peft",
            "imported": root / "imported.safetensors", "glue": tiny_glue}


# --- 1. commands that write a directory (or a file) ----------------------------------------------

def _user_dir(w, tmp: Path) -> Path:
    d = tmp / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("three years of work")
    return d


def _copy(key):
    return lambda w, tmp: shutil.copytree(w[key], tmp / f"copy-{key}")


# (command, where --out points, extra flags, message): each refused with exit code 2 and
# nothing under the world's root or the tmp dir changed.
OUT_CASES = [
    ("merge", lambda w, tmp: w["base"], ["--overwrite"],
     "is the directory of the base model this command reads"),
    ("merge", lambda w, tmp: w["run"], ["--overwrite"],
     "is the directory of the adapter this command reads"),
    ("merge", lambda w, tmp: w["root"], ["--overwrite"],
     "contains the directory of the adapter this command reads"),
    ("merge", _user_dir, ["--overwrite"],
     "exists and holds files lora_jax did not write (thesis.tex); --overwrite replaces only"),
    ("merge", _copy("merged"), [], "already holds a Hugging Face model (config.json, "),
    ("merge", _copy("peft"), ["--overwrite"],
     "exists and holds a PEFT adapter that lora_jax wrote; --overwrite replaces only a "
     "Hugging Face model directory"),
    ("export-peft", lambda w, tmp: w["run"], ["--overwrite"],
     "is the directory of the adapter this command reads"),
    ("export-peft", _user_dir, ["--overwrite"], "holds files lora_jax did not write"),
    ("export-peft", _copy("peft"), [], "already holds a PEFT adapter (adapter_config.json, "),
    ("export-peft", _copy("merged"), ["--overwrite"], "holds a Hugging Face model that lora_jax"),
    ("import-peft", lambda w, tmp: w["peft"] / "x.safetensors", ["--overwrite"],
     "is inside the directory of the PEFT adapter this command reads"),
    ("import-peft", lambda w, tmp: w["base"] / "x.safetensors", ["--overwrite"],
     "is inside the directory of the base model this command reads"),
    ("import-peft", lambda w, tmp: shutil.copy(w["imported"], tmp / "a.safetensors"), [],
     "a.safetensors: exists; give --overwrite to replace it"),
    ("compare", _user_dir, ["--overwrite"], "holds files lora_jax did not write (thesis.tex)"),
    ("compare", _copy("merged"), ["--overwrite"], "holds a Hugging Face model that lora_jax"),
]


def _command(name, w, out):
    if name == "merge":
        return ["merge", w["adapter"], "--out", out]
    if name == "export-peft":
        return ["export-peft", w["adapter"], "--out", out]
    if name == "import-peft":
        return ["import-peft", w["peft"], "--out", out, "--model", w["base"], "--task", "sst2"]
    return ["compare", "--methods", "head", "--model", w["base"], "--data-dir", w["glue"],
            *TRAIN, "--out", out]


@pytest.mark.parametrize(("command", "where", "flags", "message"), OUT_CASES,
                         ids=[f"{c}:{m[:40]}" for c, _, _, m in OUT_CASES])
def test_a_command_never_writes_over_what_it_did_not_write(command, where, flags, message,
                                                           world, tmp_path, capsys):
    out = Path(where(world, tmp_path))
    before = snapshot(world["root"]), snapshot(tmp_path)
    code, _, err = run_cli([*_command(command, world, out), *flags], capsys)
    assert code == 2, err
    assert f"{out}: " in err and message in err, err
    if "--overwrite" not in flags and "already holds" in message:
        assert "give --overwrite to replace it" in err
    assert (snapshot(world["root"]), snapshot(tmp_path)) == before  # nothing written or lost


@pytest.mark.parametrize("command", ["merge", "export-peft", "import-peft"])
def test_overwrite_replaces_what_the_same_command_wrote(command, world, tmp_path, capsys):
    out = tmp_path / ("out.safetensors" if command == "import-peft" else "out")
    assert run_cli(_command(command, world, out), capsys)[0] == 0
    first = snapshot(tmp_path)
    assert run_cli(_command(command, world, out), capsys)[0] == 2  # a second time: refused
    assert run_cli([*_command(command, world, out), "--overwrite"], capsys)[0] == 0
    assert sorted(snapshot(tmp_path)) == sorted(first)  # the same files, nothing stray left
    if command != "import-peft":
        manifest = json.loads((out / MANIFEST).read_text())
        assert sorted(manifest["files"]) == sorted(p.name for p in out.iterdir()
                                                   if p.name != MANIFEST)


def test_an_empty_directory_is_a_fine_output(world, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli(_command("merge", world, tmp_path / "empty"), capsys)[0] == 0
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def test_save_pretrained_refuses_a_model_directory_unless_asked(world, tmp_path):
    from lora_jax import load_pretrained, save_pretrained

    pre = load_pretrained(world["base"])
    with pytest.raises(OutputExistsError, match="give --overwrite to replace it"):
        save_pretrained(pre.params, pre.config, world["merged"])
    out = save_pretrained(pre.params, pre.config, tmp_path / "m")
    save_pretrained(pre.params, pre.config, out, overwrite=True)
    assert load_pretrained(out).fingerprint == pre.fingerprint


def test_compare_replaces_its_own_directory_only_with_overwrite(world, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = _command("compare", world, out)
    assert run_cli(args, capsys)[0] == 0
    before = snapshot(out)
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "already holds a comparison" in err and "--overwrite" in err
    assert snapshot(out) == before
    assert run_cli([*args, "--overwrite"], capsys)[0] == 0
    assert sorted(snapshot(out)) == sorted(before)


def test_check_output_dir_follows_symlinks_to_what_it_reads(world, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(world["base"], target_is_directory=True)
    with pytest.raises(OutputExistsError, match="is the directory of the base model"):
        check_output_dir(link, "Hugging Face model", overwrite=True,
                         reads={"the base model": world["base"]})


# --- 2. train --out on a directory holding a run -------------------------------------------------

def _train(w, out, *flags):
    return ["train", "--method", "lora", "--model", w["base"], "--data-dir", w["glue"], *TRAIN,
            "--out", out, *flags]


def test_train_refuses_a_run_directory_naming_its_files_and_both_flags(world, tmp_path, capsys):
    run = shutil.copytree(world["run"], tmp_path / "run")
    before = snapshot(run)
    code, _, err = run_cli(_train(world, run), capsys)
    assert code == 2
    assert f"{run}: already holds a run (adapter.safetensors, config.json, metrics.jsonl, " in err
    assert "--resume to continue it, --overwrite to replace it" in err
    assert snapshot(run) == before


RUN_CASES = [  # (extra flags, files to add, message): refused, the run left as it was
    (["--resume", "--overwrite"], {}, "--resume continues the run there and --overwrite "
                                      "replaces it; give one of them"),
    (["--overwrite"], {"notes.txt": "mine"}, "holds files that a lora_jax run does not write "
                                             "(notes.txt)"),
    (["--overwrite", "--data-dir", "{tmp}/noglue"], {}, "missing {tmp}/noglue/SST-2/train.tsv"),
    (["--overwrite", "--rank", "64"], {}, "--rank 64 is larger than the query layer"),
]


@pytest.mark.parametrize(("flags", "extra", "message"), RUN_CASES,
                         ids=[m[:40] for _, _, m in RUN_CASES])
def test_a_refused_or_failing_train_leaves_the_old_run_whole(flags, extra, message, world,
                                                             tmp_path, capsys):
    run = shutil.copytree(world["run"], tmp_path / "run")
    for name, text in extra.items():
        (run / name).write_text(text)
    before = snapshot(run)
    flags = [f.format(tmp=tmp_path) for f in flags]
    code, _, err = run_cli(_train(world, run, *flags), capsys)
    assert code == 2 and message.format(tmp=tmp_path) in err, err
    assert snapshot(run) == before  # the new run's checks failed before it touched the old one


def test_train_overwrite_replaces_the_run(world, tmp_path, capsys):
    run = shutil.copytree(world["run"], tmp_path / "run")
    old = snapshot(run)
    code, out, _ = run_cli(_train(world, run, "--overwrite", "--seed", "3"), capsys)
    assert code == 0
    new = snapshot(run)
    assert sorted(new) == sorted(old)
    assert json.loads(new["config.json"])["seed"] == 3
    assert new["adapter.safetensors"] != old["adapter.safetensors"]
    assert len(new["metrics.jsonl"].splitlines()) == len(old["metrics.jsonl"].splitlines())


def test_train_into_an_empty_or_new_directory_needs_no_flag(world, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli(_train(world, tmp_path / "empty"), capsys)[0] == 0
    assert run_cli(_train(world, tmp_path / "new" / "run"), capsys)[0] == 0


# --- 3. eval on another task ---------------------------------------------------------------------

EVAL_CASES = [  # (flags, message) for the SST-2 adapter
    (["--task", "rte"], "was trained on sst2 (outputs negative, positive), but --task rte scores "
                        "entailment, not_entailment; the score would mean nothing. Give "
                        "--cross-task"),
    (["--task", "stsb", "--cross-task"], "a head of 2 output(s) cannot be evaluated on 1"),
    (["--file", "{glue}/RTE/dev.tsv"], "header has no column 'sentence' (found ['index', "
                                       "'sentence1', 'sentence2', 'label']) for task sst2; these "
                                       "columns are those of rte, wnli"),
]


@pytest.mark.parametrize(("flags", "message"), EVAL_CASES, ids=[m[:40] for _, m in EVAL_CASES])
def test_eval_refuses_another_task(flags, message, world, capsys):
    flags = [f.format(glue=world["glue"]) for f in flags]
    code, out, err = run_cli(["eval", world["adapter"], "--data-dir", world["glue"], *flags],
                             capsys)
    assert code == 2 and not out
    assert message in err, err


def test_eval_on_another_task_with_the_flag_says_so(world, capsys):
    code, out, _ = run_cli(["eval", world["adapter"], "--data-dir", world["glue"], "--task",
                            "rte", "--cross-task"], capsys)
    assert code == 0
    line = json.loads(out)
    assert line["task"] == "rte" and line["adapter_task"] == "sst2"
    assert line["cross_task"].startswith("a sst2 adapter scored on rte data")
    code, out, _ = run_cli(["eval", world["adapter"], "--data-dir", world["glue"]], capsys)
    assert code == 0 and "cross_task" not in json.loads(out)  # its own task: no remark


# --- 4. config dataclasses: types before values --------------------------------------------------

CONFIG_CASES = [
    (LoRAConfig, {"alpha": float("inf")}, "LoRAConfig.alpha must be a finite number, got inf"),
    (LoRAConfig, {"alpha": True}, "LoRAConfig.alpha must be a number, got True (a bool)"),
    (LoRAConfig, {"alpha": "16"}, "LoRAConfig.alpha must be a number, got '16'"),
    (LoRAConfig, {"alpha": None}, "LoRAConfig.alpha must be a number, got None"),
    (LoRAConfig, {"alpha": -1}, "LoRAConfig.alpha must be a positive number, got -1"),
    (LoRAConfig, {"dropout": "0.1"}, "LoRAConfig.dropout must be a number, got '0.1'"),
    (LoRAConfig, {"dropout": float("nan")}, "LoRAConfig.dropout must be a finite number"),
    (LoRAConfig, {"rslora": "yes"}, "LoRAConfig.rslora must be True or False, got 'yes'"),
    (LoRAConfig, {"rslora": 1}, "LoRAConfig.rslora must be True or False, got 1"),
    (LoRAConfig, {"rank": True}, "LoRAConfig.rank must be an integer, got True (a bool)"),
    (LoRAConfig, {"rank": 4.0}, "LoRAConfig.rank must be an integer, got 4.0"),
    (LoRAConfig, {"targets": "query"}, "LoRAConfig.targets must be a non-empty tuple of names"),
    (LoRAConfig, {"targets": ("query", 3)}, "LoRAConfig.targets must hold strings, got 3"),
    (LoRAConfig, {"init": None}, "LoRAConfig.init must be one of ('kaiming', 'gaussian', 'pissa')"),
    (ModelConfig, {"hidden_size": True}, "ModelConfig.hidden_size must be an integer, got True"),
    (ModelConfig, {"num_labels": "2"}, "ModelConfig.num_labels must be an integer, got '2'"),
    (ModelConfig, {"layer_norm_eps": float("inf")}, "ModelConfig.layer_norm_eps must be a finite"),
    (ModelConfig, {"layer_norm_eps": "1e-12"}, "ModelConfig.layer_norm_eps must be a number"),
    (ModelConfig, {"hidden_dropout_prob": None}, "ModelConfig.hidden_dropout_prob must be a "
                                                 "number, got None"),
    (ModelConfig, {"attention_probs_dropout_prob": False}, "must be a number, got False (a bool)"),
    (ModelConfig, {"pad_token_id": -1}, "ModelConfig.pad_token_id must be an integer >= 0"),
    (ModelConfig, {"model_type": None}, "ModelConfig.model_type must be one of ('bert', "),
    (TrainConfig, {"alpha": float("inf")}, "TrainConfig.alpha must be a finite number, got inf"),
    (TrainConfig, {"alpha": "16"}, "TrainConfig.alpha must be a number, got '16'"),
    (TrainConfig, {"rslora": "yes"}, "TrainConfig.rslora must be True or False, got 'yes'"),
    (TrainConfig, {"epochs": True}, "TrainConfig.epochs must be an integer, got True (a bool)"),
    (TrainConfig, {"lora_dropout": "0.1"}, "TrainConfig.lora_dropout must be a number"),
    (TrainConfig, {"learning_rate": float("-inf")}, "TrainConfig.learning_rate must be a finite"),
    (TrainConfig, {"learning_rate": False}, "TrainConfig.learning_rate must be a number, got "
                                            "False (a bool)"),
    (TrainConfig, {"warmup_ratio": None}, "TrainConfig.warmup_ratio must be a number, got None"),
    (TrainConfig, {"weight_decay": "0"}, "TrainConfig.weight_decay must be a number, got '0'"),
    (TrainConfig, {"max_steps": 2.0}, "TrainConfig.max_steps must be an integer, got 2.0"),
    (TrainConfig, {"seed": None}, "TrainConfig.seed must be an integer, got None"),
    (TrainConfig, {"dtype": None}, "TrainConfig.dtype must be one of ('float32', 'bfloat16')"),
    (TrainConfig, {"targets": ["query", None]}, "TrainConfig.targets must hold strings, got None"),
]


@pytest.mark.parametrize(("cls", "change", "message"), CONFIG_CASES,
                         ids=[m.split(" must")[0] + f"={c}" for _, c, m in CONFIG_CASES])
def test_config_checks_the_type_first_and_names_the_field(cls, change, message):
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        cls(**change)
    assert isinstance(e.value, TypeError)  # callers that caught TypeError still catch it


def test_config_numbers_are_normalised():
    assert LoRAConfig(alpha=16).alpha == 16.0 and isinstance(LoRAConfig(alpha=16).alpha, float)
    assert LoRAConfig(targets=["query"]).targets == ("query",)
    assert TrainConfig(targets=["value"], alpha=8).to_json()["alpha"] == 8.0


# --- 5. file modes -------------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_mode_the_umask_implies(umask, world, tmp_path):
    from lora_jax.peft import export_peft

    old = os.umask(umask)
    try:
        cfg = TrainConfig(task="sst2", model=str(world["base"]), epochs=1, max_steps=1,
                          batch_size=16, max_length=16, rank=4)
        fit(cfg, tmp_path / "run", data_dir=world["glue"], progress=False)
        assert main(["merge", str(tmp_path / "run" / "adapter.safetensors"), "--out",
                     str(tmp_path / "merged")]) == 0
        export_peft(tmp_path / "run" / "adapter.safetensors", tmp_path / "peft")
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"adapter.safetensors", "state.safetensors", "model.safetensors",
            "adapter_model.safetensors", "config.json", "tokenizer.json"} <= names
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
    dirs = [p for p in tmp_path.rglob("*") if p.is_dir()]
    assert {oct(p.stat().st_mode & 0o777) for p in dirs} == {oct(0o777 & ~umask)}
