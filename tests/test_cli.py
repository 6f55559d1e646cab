"""The lora-jax command line."""

import json

import pytest

from lora_jax.cli import main


def test_info_prints_parameter_counts(capsys):
    assert main(["info", "--model", "roberta-base", "--rank", "8", "--targets", "qv"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trainable_params_without_head"] == 294_912
    assert report["optimizer_state_bytes"] < 0.01 * 4 * 2 * report["total_params"]


def test_info_rejects_an_unknown_target(capsys):
    with pytest.raises(SystemExit):
        main(["info", "--targets", "qeury"])
    assert "unknown target(s) ['qeury']" in capsys.readouterr().err


def test_info_reports_a_bad_rank_as_an_error(capsys):
    assert main(["info", "--rank", "0"]) == 2
    assert "LoRAConfig.rank" in capsys.readouterr().err


def test_info_reads_the_default_checkpoint_config(capsys):
    assert main(["info", "--method", "full"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trainable_params"] == 22_713_216 + 384 * 2 + 2  # MiniLM + a 2-way head


def test_info_on_a_missing_model_directory_says_how_to_fix(capsys):
    assert main(["info", "--model", "no/such/dir"]) == 2
    assert "Hugging Face model directory" in capsys.readouterr().err
