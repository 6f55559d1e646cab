"""A merged model is a complete Hugging Face model directory: checked against what
``transformers`` read from one (``fixtures/hf_merge/transformers.json``, made by
``tools/make_hf_fixture.py`` with transformers 5.24 from the adapters beside it), so no test
needs torch. It truncates at the base's limit, names the task's labels, marks a regressor as
one, and gives transformers' logits here."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lora_jax import get_task, load_pretrained, load_tokenizer
from lora_jax.cli import main
from lora_jax.export import hf_labels
from lora_jax.pretrained import SPECIAL_TOKENS, TOKENIZER_FILES, resolve_model_dir

FIXTURE = Path(__file__).parent / "fixtures" / "hf_merge"
READ = json.loads((FIXTURE / "transformers.json").read_text())


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """The fixture's adapters merged by the command line, as a user would."""
    root = tmp_path_factory.mktemp("merged")
    for task in ("sst2", "stsb"):
        assert main(["merge", str(FIXTURE / f"{task}.safetensors"), "--out",
                     str(root / task)]) == 0
    return root


@pytest.mark.parametrize("task", ["sst2", "stsb"])
def test_merged_directory_reads_as_transformers_read_it(task, merged):
    read = READ[task]
    d = merged / task
    config = json.loads((d / "config.json").read_text())
    assert config["id2label"] == read["id2label"]
    assert config["label2id"] == {v: int(k) for k, v in read["id2label"].items()}
    assert config["problem_type"] == read["problem_type"]
    limit = json.loads((d / "tokenizer_config.json").read_text())["model_max_length"]
    assert limit == read["model_max_length"] == 512  # not 1e30: truncation=True cuts here
    tok = load_tokenizer(d, max_length=limit)
    assert [len(ids) for ids, _ in tok.encode(READ["texts"])] == read["lengths"]  # 800 words
    assert [ids for ids, _ in tok.encode(READ["texts"][:2])] == read["input_ids"]
    pre = load_pretrained(d)  # the merged weights, head included, no adapters
    assert pre.head_from_checkpoint
    batch = tok(READ["texts"])
    logits = np.asarray(pre.model().apply({"params": pre.params}, batch["input_ids"],
                                          batch["token_type_ids"], batch["attention_mask"]))
    np.testing.assert_allclose(logits, read["logits"], atol=1e-4, rtol=0)
    if read["problem_type"] == "regression":  # pipeline reports the raw score, no sigmoid
        assert [p["label"] for p in read["pipeline"]] == ["score"] * 3
        np.testing.assert_allclose([p["score"] for p in read["pipeline"]], logits[:, 0],
                                   atol=1e-4)
    else:  # pipeline names the class by our id2label
        assert [p["label"] for p in read["pipeline"]] == [
            config["id2label"][str(i)] for i in logits.argmax(-1)]


def test_merged_directory_carries_the_base_tokenizer_files(merged):
    base = resolve_model_dir("minilm")
    d = merged / "sst2"
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            assert (d / name).read_bytes() == (base / name).read_bytes(), name
    ours = json.loads((d / "tokenizer_config.json").read_text())
    theirs = json.loads((base / "tokenizer_config.json").read_text())
    assert ours == theirs  # the base's special tokens, lower-casing and its own 512


def test_a_base_without_tokenizer_config_gets_one_with_its_position_limit(tiny_base, tiny_glue,
                                                                         tmp_path):
    from lora_jax.config import TrainConfig
    from lora_jax.run import fit

    base = shutil.copytree(tiny_base, tmp_path / "base")
    assert not (base / "tokenizer_config.json").exists()
    cfg = TrainConfig(task="stsb", model=str(base), epochs=1, max_steps=1, batch_size=16,
                      max_length=16, rank=2)
    fit(cfg, tmp_path / "run", data_dir=tiny_glue, progress=False)
    assert main(["merge", str(tmp_path / "run" / "adapter.safetensors"), "--out",
                 str(tmp_path / "m")]) == 0
    config = json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())
    known = {k: v for k, v in SPECIAL_TOKENS["bert"].items() if k != "mask_token"}
    assert config == {"model_max_length": 64, **known}  # 64 positions; its vocab has no [MASK]
    hf = json.loads((tmp_path / "m" / "config.json").read_text())
    assert hf["problem_type"] == "regression" and hf["id2label"] == {"0": "score"}


@pytest.mark.parametrize(("meta", "labels"), [
    ({"task": "sst2", "labels": ["0", "1"]}, ["negative", "positive"]),  # before label_names
    ({"task": "rte", "labels": ["entailment", "not_entailment"]},
     ["entailment", "not_entailment"]),
    ({"task": "mnli", "labels": ["a", "b", "c"]}, ["contradiction", "entailment", "neutral"]),
    ({"task": "cola", "labels": ["0", "1"], "label_names": ["bad", "good"]}, ["bad", "good"]),
    ({"task": "stsb", "labels": []}, ["score"]),
    ({"task": None, "labels": ["LABEL_0", "LABEL_1", "LABEL_2"]},
     ["LABEL_0", "LABEL_1", "LABEL_2"]),
])
def test_hf_labels_come_from_the_adapter_metadata(meta, labels):
    assert hf_labels(meta) == labels


def test_every_classification_task_names_its_labels():
    from lora_jax.data import TASKS

    for task in TASKS.values():
        names = get_task(task.name).label_names
        assert len(names) == task.num_labels and len(set(names)) == len(names)
        assert task.is_regression or not all(n.isdigit() for n in names), task.name
