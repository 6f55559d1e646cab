"""Hugging Face PEFT interop: export and import are exact, match the files real PEFT writes, and
a real PEFT adapter gives PEFT's logits here. The real adapters in ``fixtures/peft_minilm*`` (plain
LoRA, the tutorials' "dense" recipe, DoRA, and PiSSA after PEFT's conversion to rank 2r) come
from ``tools/make_peft_fixture.py`` (peft 0.21.2); no test needs torch or peft."""

import itertools
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lora_jax import LoRAConfig, ModelConfig, SequenceClassifier, load_pretrained
from lora_jax.checkpoint import CheckpointFileError, read_adapter, save_adapter
from lora_jax.cli import main
from lora_jax.config import TrainConfig
from lora_jax.files import OutputExistsError
from lora_jax.models import BLOCK_TARGETS, LORA_TARGETS
from lora_jax.peft import (
    PeftFormatError,
    _dense_modules,
    export_peft,
    import_peft,
    peft_selects,
    role_of,
    save_imported,
    target_modules,
)
from lora_jax.pretrained import save_pretrained
from lora_jax.tokenizer import load_tokenizer, pad_batch
from lora_jax.train import init_variables
from lora_jax.trees import flatten, unflatten

FIXTURES = Path(__file__).parent / "fixtures"
REAL = FIXTURES / "peft_minilm"
ALL = LORA_TARGETS


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory):
    cfg = ModelConfig.tiny(model_type="roberta", pad_token_id=1, type_vocab_size=1,
                           layer_norm_eps=1e-5)
    params = SequenceClassifier(cfg).init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))
    params = {k: v for k, v in params["params"].items() if k != "classifier"}
    return save_pretrained(params, cfg, tmp_path_factory.mktemp("tiny_roberta"))


@pytest.fixture(scope="module")
def minilm():
    return load_pretrained("minilm", num_labels=2)


def make_adapter(base, path, *, targets=("query", "value"), rank=4, alpha=12.0, rslora=False,
                 dropout=0.0, seed=0, method="lora", pretrained=None):
    """An adapter file with random A, B and head (B != 0, so nothing is trivially zero)."""
    pre = pretrained or load_pretrained(base, num_labels=2, seed=seed)
    cfg = TrainConfig(task="sst2", method=method, model=str(base), rank=rank, alpha=alpha,
                      targets=targets, rslora=rslora, lora_dropout=dropout)
    lora = cfg.lora_config() or LoRAConfig(rank=rank, alpha=alpha, targets=targets)
    model = SequenceClassifier(pre.config, lora)
    shapes = jax.eval_shape(lambda: init_variables(model, pre.params, "lora", jax.random.key(0)))
    has_lora = cfg.lora_config() is not None
    flat = flatten({"params": pre.params, **({"lora": shapes["lora"]} if has_lora else {})})
    for i, k in enumerate(sorted(flat)):
        if k.startswith(("lora/", "params/classifier/")):
            flat[k] = jax.random.normal(jax.random.key(seed * 1000 + i), flat[k].shape)
    meta = {"task": "sst2", "labels": ["negative", "positive"], "base_model": str(base),
            "base_fingerprint": pre.fingerprint, "model_config": asdict(pre.config),
            "train_config": cfg.to_json()}
    return save_adapter(path, unflatten(flat), method, meta)


# --- round trip ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model,targets,rslora,method", [
    ("bert", ("query", "value"), False, "lora"),
    ("bert", ("output",), False, "lora"),
    ("bert", ("query", "key", "value", "attention_output", "intermediate", "output", "pooler"),
     False, "lora"),
    ("roberta", BLOCK_TARGETS, True, "lora"),
    ("bert", ("query", "value", "output", "pooler"), False, "dora"),
    ("roberta", BLOCK_TARGETS, True, "dora"),
])
def test_export_then_import_is_bit_exact(model, targets, rslora, method, tiny_base, tiny_roberta,
                                         tmp_path):
    base = tiny_base if model == "bert" else tiny_roberta
    src = make_adapter(base, tmp_path / "a.safetensors", targets=targets, rslora=rslora,
                       dropout=0.1, method=method)
    out = export_peft(src, tmp_path / "peft")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json",
                                                     "adapter_model.safetensors", "lora_jax.json"]
    imported = import_peft(out, base=str(base))
    assert imported.lora == LoRAConfig(rank=4, alpha=12.0, targets=targets, dropout=0.1,
                                       rslora=rslora, dora=method == "dora")
    assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is (method == "dora")
    back = save_imported(imported, tmp_path / "b.safetensors", task="sst2")
    (t0, m0), (t1, m1) = read_adapter(src), read_adapter(back)
    assert sorted(t0) == sorted(t1)
    for k in t0:
        assert t0[k].dtype == t1[k].dtype and np.array_equal(t0[k], t1[k]), k
    assert m1["base_fingerprint"] == m0["base_fingerprint"] and m1["task"] == "sst2"
    assert m1["method"] == method
    cfg0, cfg1 = (TrainConfig.from_json(m["train_config"]) for m in (m0, m1))
    assert cfg1.lora_config() == cfg0.lora_config()


def test_exported_tensors_are_ours_transposed_under_peft_names(tiny_base, tmp_path):
    src = make_adapter(tiny_base, tmp_path / "a.safetensors")
    ours, _ = read_adapter(src)
    theirs = load_file(export_peft(src, tmp_path / "peft") / "adapter_model.safetensors")
    a = ours["lora/bert/encoder/layer/1/attention/self/value/a"]  # (d_in, r)
    b = ours["lora/bert/encoder/layer/1/attention/self/value/b"]  # (r, d_out)
    key = "base_model.model.bert.encoder.layer.1.attention.self.value"
    assert np.array_equal(theirs[f"{key}.lora_A.weight"], a.T)  # (r, d_in)
    assert np.array_equal(theirs[f"{key}.lora_B.weight"], b.T)  # (d_out, r)
    assert np.array_equal(theirs["base_model.model.classifier.weight"],
                          ours["params/classifier/kernel"].T)
    assert len(theirs) == len(ours)


def test_rslora_maps_to_use_rslora(tiny_base, tmp_path):
    src = make_adapter(tiny_base, tmp_path / "a.safetensors", rslora=True, alpha=16.0, rank=4)
    out = export_peft(src, tmp_path / "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["use_rslora"] is True and config["r"] == 4 and config["lora_alpha"] == 16
    imported = import_peft(out, base=str(tiny_base))
    assert imported.lora.rslora and imported.lora.scale == 16 / 2  # alpha / sqrt(r)
    config["use_rslora"] = False
    (out / "adapter_config.json").write_text(json.dumps(config))
    assert import_peft(out, base=str(tiny_base)).lora.scale == 16 / 4  # alpha / r


def test_target_modules_select_exactly_the_targeted_layers(tiny_cfg):
    """Every subset of roles, BERT and RoBERTa, under PEFT's matching rule (a list entry matches
    a module's full name or a dotted suffix; a str is a full-match regex). Checked once against
    the real PEFT 0.21.2 too: it put LoRA on exactly these modules."""
    assert target_modules(("value", "query"), "bert") == ["query", "value"]
    assert target_modules(("output",), "bert") == r"bert\.encoder\.layer\.\d+\.(?:output\.dense)"
    assert target_modules(("output", "pooler"), "bert") == (
        r"(?:bert\.encoder\.layer\.\d+\.(?:output\.dense)|bert\.pooler\.dense)")
    for mt, roles in (("bert", ALL), ("roberta", BLOCK_TARGETS)):  # RoBERTa has no pooler
        modules = _dense_modules(tiny_cfg.replace(model_type=mt))
        for n in range(1, len(roles) + 1):
            for targets in itertools.combinations(roles, n):
                config = {"target_modules": target_modules(targets, mt),
                          "modules_to_save": ["classifier", "score"]}
                chosen = {m for m in modules if peft_selects(config, m)}
                assert chosen == {m for m in modules if role_of(m, mt) in targets}, targets
                per_layer = len(set(targets) - {"pooler"})
                assert len(chosen) == per_layer * tiny_cfg.num_hidden_layers + (
                    "pooler" in targets)


# --- against the real PEFT files ------------------------------------------------------------------


def assert_like_real_peft(out: Path, keys_file: Path, config_file: Path) -> None:
    """An export has exactly the keys, shapes and dtypes real PEFT saved, and every config
    field it writes has PEFT's value (``target_modules``: PEFT writes a set, in any order)."""
    tensors = load_file(out / "adapter_model.safetensors")
    ours = [f"{k} {'x'.join(map(str, v.shape))} {v.dtype}" for k, v in sorted(tensors.items())]
    assert ours == keys_file.read_text().splitlines()
    real = json.loads(config_file.read_text())
    written = json.loads((out / "adapter_config.json").read_text())
    assert set(written) <= set(real), set(written) - set(real)
    for field, value in written.items():
        assert (sorted(value) == sorted(real[field]) if field == "target_modules"
                else value == real[field]), field


def test_exported_minilm_adapter_has_real_peft_keys_and_config(minilm, tmp_path):
    src = make_adapter("minilm", tmp_path / "a.safetensors", rank=8, alpha=16.0, dropout=0.1,
                       pretrained=minilm)
    assert_like_real_peft(export_peft(src, tmp_path / "peft"), FIXTURES / "peft_minilm_keys.txt",
                          FIXTURES / "peft_minilm_adapter_config.json")


def test_exported_minilm_dora_adapter_has_real_peft_keys_and_config(minilm, tmp_path):
    """A DoRA adapter exports as PEFT's use_dora=True files: the same keys (the magnitude as
    ``lora_magnitude_vector``, shape (d_out,)) and the same config fields."""
    real_dir = FIXTURES / "peft_minilm_dora"
    src = make_adapter("minilm", tmp_path / "a.safetensors", rank=4, alpha=12.0,
                       method="dora", pretrained=minilm)
    assert_like_real_peft(export_peft(src, tmp_path / "peft"), real_dir / "keys.txt",
                          real_dir / "adapter_config.json")


# Real PEFT adapters and the LoRAConfig each must import as: r=8 on query and value, and the
# recipe BERT tutorials copy, target_modules=["query", "key", "value", "dense"], where "dense"
# also selects the attention output, both feed-forward layers and the pooler.
REAL_ADAPTERS = {
    "qv": (REAL, LoRAConfig(rank=8, alpha=16.0, targets=("query", "value"), dropout=0.1)),
    "dense": (FIXTURES / "peft_minilm_dense", LoRAConfig(rank=2, alpha=8.0, targets=ALL)),
    # DoRA (use_dora=True), its magnitudes moved away from ||W + s BA||
    "dora": (FIXTURES / "peft_minilm_dora", LoRAConfig(rank=4, alpha=12.0,
                                                       targets=("query", "value"), dora=True)),
    # a PiSSA adapter (r=4) after PEFT's conversion: plain LoRA of rank 8 on the original base
    "pissa": (FIXTURES / "peft_minilm_pissa", LoRAConfig(rank=8, alpha=16.0,
                                                         targets=("query", "value"))),
}


@pytest.mark.parametrize("recipe", sorted(REAL_ADAPTERS))
def test_real_peft_adapter_reproduces_peft_logits(recipe, minilm):
    real, expected = REAL_ADAPTERS[recipe]
    record = json.loads((real / "logits.json").read_text())
    batch = {k: jnp.asarray(record[k]) for k in ("input_ids", "token_type_ids", "attention_mask")}
    tok = load_tokenizer("minilm")
    ours = pad_batch(tok.encode(record["sentences"]), len(record["input_ids"][0]), tok.pad_id)
    assert ours["input_ids"].tolist() == record["input_ids"]
    imported = import_peft(real, base=minilm)
    assert imported.lora == expected
    model, variables = imported.model(), imported.full_variables()
    logits = np.asarray(model.apply(variables, **batch))
    plain = np.asarray(model.apply({"params": variables["params"]}, **batch))
    np.testing.assert_allclose(logits, record["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(plain, record["base_logits"], atol=1e-4, rtol=0)
    assert np.abs(logits - plain).max() > 0.05  # the adapter matters, far above the tolerance


@pytest.mark.parametrize("recipe", sorted(REAL_ADAPTERS))
def test_real_peft_adapter_round_trips_to_identical_peft_tensors(recipe, minilm, tmp_path):
    """Back out, PEFT gets its own tensors under its own names, and a target_modules that
    selects the same modules by its matching rule (so it loads them onto the same layers)."""
    real_dir = REAL_ADAPTERS[recipe][0]
    imported = import_peft(real_dir, base=minilm)
    path = save_imported(imported, tmp_path / "imported.safetensors")
    assert read_adapter(path)[1]["task"] is None
    out = export_peft(path, tmp_path / "peft")
    modules = _dense_modules(minilm.config)
    peft_config = json.loads((real_dir / "adapter_config.json").read_text())
    ours_config = json.loads((out / "adapter_config.json").read_text())
    assert ({m for m in modules if peft_selects(ours_config, m)}
            == {m for m in modules if peft_selects(peft_config, m)})
    real, ours = load_file(real_dir / "adapter_model.safetensors"), load_file(
        out / "adapter_model.safetensors")
    assert sorted(real) == sorted(ours)
    for k in real:
        assert real[k].dtype == ours[k].dtype and np.array_equal(real[k], ours[k]), k
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_peft_tensors_are_widened_exactly(dtype, good_peft, tiny_base, tmp_path):
    import ml_dtypes

    d = shutil.copytree(good_peft, tmp_path / "peft")
    half = {k: v.astype(getattr(ml_dtypes, dtype, np.float16))
            for k, v in load_file(d / "adapter_model.safetensors").items()}
    save_file(half, d / "adapter_model.safetensors")
    imported = flatten(import_peft(d, base=str(tiny_base)).variables)
    a = imported["lora/bert/encoder/layer/0/attention/self/query/a"]
    assert a.dtype == jnp.float32
    key = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"
    assert np.array_equal(np.asarray(a), half[key].astype(np.float32).T)


# --- errors --------------------------------------------------------------------------------------


def _config(**changes):
    def edit(d: Path):
        c = json.loads((d / "adapter_config.json").read_text())
        c.update(changes)
        (d / "adapter_config.json").write_text(json.dumps(c))
    return edit


def _tensors(change):
    def edit(d: Path):
        t = load_file(d / "adapter_model.safetensors")
        change(t)
        save_file(t, d / "adapter_model.safetensors")
    return edit


Q0 = "base_model.model.bert.encoder.layer.0.attention.self.query"


def _rename_to_roberta(t):
    for k in list(t):
        t[k.replace(".bert.", ".roberta.")] = t.pop(k)


def _drop_layer_1(t):
    for k in [k for k in t if ".layer.1." in k]:
        del t[k]


BAD = {
    "no config": (lambda d: (d / "adapter_config.json").unlink(), "adapter_config.json: missing"),
    "no weights": (lambda d: (d / "adapter_model.safetensors").unlink(),
                   "adapter_model.safetensors: missing"),
    "pickle only": (lambda d: ((d / "adapter_model.safetensors").rename(d / "adapter_model.bin")),
                    "adapter_model.bin: a pickle file"),
    "bad json": (lambda d: (d / "adapter_config.json").write_text("{r: 4"), "not valid JSON"),
    "not lora": (_config(peft_type="IA3"), "peft_type 'IA3' is not 'LORA'"),
    "not seq cls": (_config(task_type="CAUSAL_LM"), "task_type 'CAUSAL_LM'"),
    "fan_in_fan_out": (_config(fan_in_fan_out=True), "fan_in_fan_out=True is not supported"),
    "bias": (_config(bias="all"), "bias='all' is not supported"),
    "dora": (_config(use_dora=True), "use_dora=True in adapter_config.json: a DoRA adapter has"),
    "dora flag": (_config(use_dora="yes"), "use_dora='yes' is not true or false"),
    "rank_pattern": (_config(rank_pattern={"query": 2}), "rank_pattern={'query': 2}"),
    "alpha_pattern": (_config(alpha_pattern={"value": 8}), "alpha_pattern={'value': 8}"),
    "layers_to_transform": (_config(layers_to_transform=[0]), "layers_to_transform=[0]"),
    "pissa": (_config(init_lora_weights="pissa"), "init_lora_weights='pissa'"),
    "target_modules": (_config(target_modules=["query", "key", "value"]),
                       "bert.encoder.layer.0.attention.self.key"),
    "config rank": (_config(r=8), f"{Q0}.lora_A.weight has shape (4, 32), expected (8, 32)"),
    "other model": (_tensors(_rename_to_roberta),
                    "adapts roberta.encoder.layer.0.attention.self.query, which is not a layer"),
    "wrong shape": (_tensors(lambda t: t.update({f"{Q0}.lora_B.weight": np.zeros((16, 4),
                                                                                  np.float32)})),
                    f"{Q0}.lora_B.weight has shape (16, 4), expected (32, 4)"),
    "some layers": (_tensors(_drop_layer_1), "some layers only"),
    "dora vector": (_tensors(lambda t: t.update({f"{Q0}.lora_magnitude_vector":
                                                 np.ones(32, np.float32)})),
                    f"unexpected ['{Q0}.lora_magnitude_vector'] (use_dora=False"),
    "no head": (_tensors(lambda t: t.pop("base_model.model.classifier.weight")),
                "no classifier head base_model.model.classifier.weight"),
    "float64": (_tensors(lambda t: t.update({f"{Q0}.lora_A.weight":
                                             t[f"{Q0}.lora_A.weight"].astype(np.float64)})),
                f"{Q0}.lora_A.weight has dtype F64"),
}


@pytest.fixture(scope="module")
def good_peft(tiny_base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("good")
    return export_peft(make_adapter(tiny_base, tmp / "a.safetensors"), tmp / "peft")


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_peft_dirs_are_refused_naming_file_and_culprit(case, good_peft, tiny_base, tmp_path):
    edit, message = BAD[case]
    d = shutil.copytree(good_peft, tmp_path / "peft")
    edit(d)
    with pytest.raises(PeftFormatError) as e:
        import_peft(d, base=str(tiny_base))
    assert message in str(e.value) and str(d) in str(e.value)


def test_import_without_a_local_base_says_nothing_is_downloaded(good_peft, tmp_path):
    d = shutil.copytree(good_peft, tmp_path / "peft")
    _config(base_model_name_or_path="bert-base-uncased")(d)
    with pytest.raises(PeftFormatError, match="never downloads.*--model"):
        import_peft(d)
    with pytest.raises(PeftFormatError, match="no such directory"):
        import_peft(tmp_path / "nowhere")


def test_export_refuses_a_non_lora_adapter(tiny_base, tmp_path):
    src = make_adapter(tiny_base, tmp_path / "a.safetensors", method="bitfit")
    with pytest.raises(CheckpointFileError, match="method 'bitfit' is not LoRA"):
        export_peft(src, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_export_never_leaves_a_half_written_directory(good_peft, tiny_base, tmp_path,
                                                      monkeypatch):
    src = make_adapter(tiny_base, tmp_path / "a.safetensors", seed=3)
    import lora_jax.peft as peft_mod

    def broken(arrays, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(peft_mod, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        export_peft(src, tmp_path / "new")
    out = shutil.copytree(good_peft, tmp_path / "old")
    before = (out / "adapter_model.safetensors").read_bytes()
    with pytest.raises(OSError, match="disk full"):
        export_peft(src, out, overwrite=True)  # an existing PEFT dir keeps its old content
    assert (out / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "old"]
    monkeypatch.undo()
    with pytest.raises(OutputExistsError, match="give --overwrite to replace it"):
        export_peft(src, out)  # an export is replaced only when asked
    export_peft(src, out, overwrite=True)  # ... and then whole
    assert (out / "adapter_model.safetensors").read_bytes() != before
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="notes.txt"):
        export_peft(src, out, overwrite=True)  # anything else is never clobbered


# --- command line --------------------------------------------------------------------------------


def test_cli_export_import_then_eval_and_merge(tiny_base, tiny_glue, tmp_path, capsys):
    src = make_adapter(tiny_base, tmp_path / "a.safetensors")
    assert main(["export-peft", str(src), "--out", str(tmp_path / "peft")]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == ["adapter_config.json",
                                                           "adapter_model.safetensors",
                                                           "lora_jax.json"]
    back = tmp_path / "b.safetensors"
    assert main(["import-peft", str(tmp_path / "peft"), "--out", str(back), "--model",
                 str(tiny_base), "--task", "SST-2"]) == 0
    assert json.loads(capsys.readouterr().out)["targets"] == ["query", "value"]
    assert main(["eval", str(back), "--data-dir", str(tiny_glue)]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 32  # (its tensors: bit-exact)
    assert main(["merge", str(back), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    hf = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert hf["id2label"] == {"0": "negative", "1": "positive"}  # --task sst2 at import
    capsys.readouterr()
    notask = tmp_path / "c.safetensors"
    assert main(["import-peft", str(tmp_path / "peft"), "--out", str(notask), "--model",
                 str(tiny_base)]) == 0
    capsys.readouterr()
    assert main(["eval", str(notask), "--data-dir", str(tiny_glue)]) == 2
    assert "give --task" in capsys.readouterr().err
    assert main(["import-peft", str(tmp_path / "nowhere"), "--out", str(tmp_path / "d.st")]) == 2
    assert "nowhere: no such directory" in capsys.readouterr().err
