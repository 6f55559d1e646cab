"""The lora-jax command line."""

import json

import numpy as np
import pytest

from lora_jax.cli import main


def test_info_prints_parameter_counts(capsys):
    assert main(["info", "--model", "roberta-base", "--rank", "8", "--targets", "qv"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trainable_params_without_head"] == 294_912
    assert report["optimizer_state_bytes"] < 0.01 * 4 * 2 * report["total_params"]


def test_info_counts_dora_s_magnitudes_and_says_how_lora_starts(capsys):
    reports = {}
    for args in (["--method", "lora"], ["--method", "dora"], ["--init", "pissa"]):
        assert main(["info", *args]) == 0
        reports[" ".join(args)] = json.loads(capsys.readouterr().out)
    lora, dora, pissa = reports.values()
    # MiniLM, r = 8 on query,value: one magnitude per output of 6 layers x 2 adapted 384-wide
    assert dora["trainable_params_without_head"] - lora["trainable_params_without_head"] == 4608
    assert dora["lora"]["dora"] is True and lora["lora"]["dora"] is False
    assert pissa["lora"]["init"] == "pissa"
    assert pissa["trainable_params"] == lora["trainable_params"]


def test_info_rejects_an_unknown_target(capsys):
    with pytest.raises(SystemExit):
        main(["info", "--targets", "qeury"])
    assert "unknown target(s) ['qeury']" in capsys.readouterr().err


def test_info_reports_a_bad_rank_as_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["info", "--rank", "0"])
    assert e.value.code == 2
    assert "argument --rank: must be a positive integer, got 0" in capsys.readouterr().err
    assert main(["info", "--model", "tiny", "--rank", "64"]) == 2
    assert "--rank 64 is larger than the query layer" in capsys.readouterr().err


def test_info_reads_the_default_checkpoint_config(capsys):
    assert main(["info", "--method", "full"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trainable_params"] == 22_713_216 + 384 * 2 + 2  # MiniLM + a 2-way head


def test_info_on_a_missing_model_directory_says_how_to_fix(capsys):
    assert main(["info", "--model", "no/such/dir"]) == 2
    assert "Hugging Face model directory" in capsys.readouterr().err


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_eval_merge_on_a_tiny_model(tiny_base, tiny_glue, tmp_path, capsys):
    from lora_jax import load_pretrained

    run = tmp_path / "run"
    common = ["--model", str(tiny_base), "--data-dir", str(tiny_glue), "--max-length", "16"]
    code, out, _ = run_cli(["train", "--task", "SST-2", "--method", "lora", "--epochs", "1",
                            "--batch-size", "16", "--rank", "4", "--alpha", "32", "--quiet",
                            "--out", str(run), *common], capsys)
    assert code == 0
    trained = json.loads(out.splitlines()[-1])["final"]["eval"]
    code, out, _ = run_cli(["eval", str(run / "adapter.safetensors"), "--data-dir",
                            str(tiny_glue)], capsys)
    assert code == 0
    evaluated = json.loads(out)
    assert evaluated["accuracy"] == trained["accuracy"] and evaluated["examples"] == 32
    code, out, _ = run_cli(["eval", str(run / "adapter.safetensors"), "--file",
                            str(tiny_glue / "SST-2" / "train.tsv")], capsys)
    assert code == 0 and json.loads(out)["examples"] == 96
    code, out, _ = run_cli(["merge", str(run / "adapter.safetensors"), "--out",
                            str(tmp_path / "merged")], capsys)
    assert code == 0
    merged = load_pretrained(tmp_path / "merged")
    assert merged.head_from_checkpoint and (tmp_path / "merged" / "tokenizer.json").is_file()
    code, out, _ = run_cli(["eval", str(run / "adapter.safetensors"), "--data-dir",
                            str(tiny_glue)], capsys)
    # the merged model (no adapters) scores what the adapter scored
    from lora_jax.data import Batcher, choose_buckets, encode, get_task, load_split
    from lora_jax.train import evaluate

    tok = merged.tokenizer(max_length=16)
    dev = encode(tok, load_split("sst2", "dev", data_dir=tiny_glue))
    scores = evaluate(merged.model().apply, {"params": merged.params},
                      Batcher(dev, 64, choose_buckets(dev.lengths, 16), shuffle=False),
                      get_task("sst2"))
    assert scores["accuracy"] == trained["accuracy"]
    assert abs(scores["loss"] - trained["loss"]) < 1e-5


def test_compare_writes_table_json_and_chart(tiny_base, tiny_glue, tmp_path, capsys):
    out_dir = tmp_path / "cmp"
    code, out, _ = run_cli(["compare", "--task", "rte", "--methods", "full,lora,bitfit",
                            "--epochs", "1", "--batch-size", "16", "--quiet", "--max-length",
                            "32", "--model", str(tiny_base), "--data-dir", str(tiny_glue),
                            "--out", str(out_dir)], capsys)
    assert code == 0
    report = json.loads((out_dir / "compare.json").read_text())
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == {"full", "lora", "bitfit"}
    assert rows["lora"]["trainable_params"] < rows["full"]["trainable_params"]
    assert rows["lora"]["optimizer_state_bytes"] < 0.1 * rows["full"]["optimizer_state_bytes"]
    assert rows["lora"]["checkpoint_bytes"] < rows["full"]["checkpoint_bytes"]
    assert all(r["median_step_ms"] > 0 and r["step_memory_bytes"] > 0 for r in rows.values())
    md = (out_dir / "compare.md").read_text()
    assert sum(ln.startswith("| ") for ln in md.splitlines()) == 4  # header + 3 rows
    assert "| lora |" in md
    assert (out_dir / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| method |" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--task", "sst3"], "unknown task 'sst3'"),
        (["train", "--method", "lroa"], "invalid choice: 'lroa'"),
        (["train", "--batch-size", "0"], "must be a positive integer"),
        (["compare", "--methods", "full,lroa"], "--methods: unknown ['lroa']"),
        (["train", "--init", "svd"], "argument --init: invalid choice: 'svd'"),
        (["train", "--loraplus-ratio", "0"], "argument --loraplus-ratio: must be a positive"),
        (["train", "--method", "full", "--loraplus-ratio", "16"],
         "TrainConfig.loraplus_ratio=16.0 needs a method with LoRA layers"),
        (["train", "--method", "bitfit", "--init", "pissa"],
         "TrainConfig.lora_init='pissa' needs a method with LoRA layers"),
        (["info", "--init", "pissa", "--rank", "200"], "--init pissa with --rank 200"),
    ],
)
def test_bad_flags_name_the_flag(args, message, capsys):
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_eval_of_a_missing_adapter(tmp_path, capsys):
    code, _, err = run_cli(["eval", str(tmp_path / "nope.safetensors")], capsys)
    assert code == 2 and "nope.safetensors: no such file" in err


def test_merge_refuses_houlsby_adapters_and_writes_nothing(tiny_base, tiny_glue, tmp_path,
                                                         capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "adapter", "--epochs", "1", "--batch-size", "16",
                 "--adapter-size", "4", "--quiet", "--model", str(tiny_base), "--data-dir",
                 str(tiny_glue), "--max-length", "16", "--out", str(run)]) == 0
    capsys.readouterr()
    code, _, err = run_cli(["merge", str(run / "adapter.safetensors"), "--out",
                            str(tmp_path / "m")], capsys)
    assert code == 2 and "cannot be folded into the base" in err
    assert not (tmp_path / "m").exists()


def test_a_diverging_run_exits_1_naming_the_step(tiny_base, tiny_glue, tmp_path, capsys):
    code, _, err = run_cli(["train", "--method", "full", "--lr", "1e6", "--epochs", "1",
                            "--batch-size", "16", "--save-every", "1", "--quiet",
                            "--model", str(tiny_base), "--data-dir", str(tiny_glue),
                            "--max-length", "16", "--out", str(tmp_path / "run")], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.startswith("lora-jax train: error: loss became nan at step ")
    assert "the last good state (step " in err and "--max-grad-norm" in err


def test_rslora_on_the_command_line(tiny_base, tiny_glue, tmp_path, capsys):
    """--rslora reaches the run's config, the adapter, merge (alpha/sqrt(r)) and info."""
    from lora_jax import load_pretrained
    from lora_jax.adapters import restore
    from lora_jax.checkpoint import read_adapter

    assert main(["info", "--model", "tiny", "--rank", "4", "--alpha", "8", "--rslora"]) == 0
    assert json.loads(capsys.readouterr().out)["lora"]["scale"] == 8 / 2  # alpha / sqrt(4)
    run = tmp_path / "run"
    code, _, _ = run_cli(["train", "--rslora", "--rank", "4", "--alpha", "8", "--epochs", "1",
                          "--max-steps", "2", "--batch-size", "16", "--quiet", "--max-length",
                          "16", "--model", str(tiny_base), "--data-dir", str(tiny_glue),
                          "--out", str(run)], capsys)
    assert code == 0
    assert json.loads((run / "config.json").read_text())["rslora"] is True
    assert read_adapter(run / "adapter.safetensors")[1]["train_config"]["rslora"] is True
    assert main(["merge", str(run / "adapter.safetensors"), "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    model, variables, _, _ = restore(run / "adapter.safetensors")
    assert model.lora.rslora and model.lora.scale == 4.0
    ids = np.ones((2, 6), np.int32)
    merged = load_pretrained(tmp_path / "m")
    np.testing.assert_allclose(merged.model().apply({"params": merged.params}, ids),
                               model.apply(variables, ids), atol=1e-5)
    code, _, _ = run_cli(["compare", "--methods", "lora", "--rslora", "--epochs", "1",
                          "--max-steps", "1", "--batch-size", "16", "--quiet", "--max-length",
                          "16", "--model", str(tiny_base), "--data-dir", str(tiny_glue),
                          "--out", str(tmp_path / "cmp")], capsys)
    assert code == 0
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["config"]["rslora"]


def test_info_counts_a_pooler_adapter(capsys):
    assert main(["info", "--rank", "8", "--targets", "query,value,pooler"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trainable_params_without_head"] == 6 * 2 * 2 * 384 * 8 + 2 * 384 * 8
    assert main(["info", "--model", "roberta-base", "--targets", "pooler"]) == 2
    assert "RoBERTa classifies from its first token" in capsys.readouterr().err
