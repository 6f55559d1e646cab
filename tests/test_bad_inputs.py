"""Bad inputs, one table: every flag, TSV file, model directory and adapter file that is wrong
ends in our own error type (exit code 2 on the command line) with a message that names the
culprit: the flag, or the file and its line, field or tensor. Then property-based tests: no
byte string makes the TSV reader or the adapter loader fail with anything else."""

import json
import os
import pickle
import re
import shutil
import tempfile

import numpy as np
import pytest
from conftest import write_tiny_checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

from lora_jax.adapters import adapter_train_config, restore
from lora_jax.checkpoint import META_KEY, CheckpointFileError, apply_adapter, read_adapter
from lora_jax.cli import main
from lora_jax.config import TrainConfig
from lora_jax.glue import MAX_LINE_CHARS, GlueDataError, get_task, read_tsv
from lora_jax.pretrained import CheckpointError, load_pretrained, load_tokenizer
from lora_jax.run import fit
from lora_jax.train import init_variables

# --- command-line flags -------------------------------------------------------------------------
# Flags that argparse rejects name themselves ("argument --rank: ..."); flags whose limits depend
# on the model or the data are checked before training and name the flag in the message.

TRAIN = ["train", "--model", "{base}", "--data-dir", "{glue}", "--max-length", "16",
         "--batch-size", "16", "--epochs", "1", "--quiet", "--out", "{tmp}/run"]

CLI_CASES = [
    (["train", "--task", "sst3"], "argument --task: unknown task 'sst3'; GLUE tasks are cola"),
    (["train", "--method", "lroa"], "argument --method: invalid choice: 'lroa' (choose from"),
    (["train", "--targets", "qeury"], "argument --targets: unknown target(s) ['qeury']"),
    (["train", "--targets", ","], "argument --targets: unknown target(s) [',']"),
    (["train", "--mesh", "gpu=2"], "argument --mesh: 'gpu=2' is not AXIS=SIZE with AXIS one of"),
    (["train", "--mesh", "data=0"], "argument --mesh: size of 'data' must be a positive integer"),
    (["train", "--mesh", "data=4096"], "argument --mesh: --mesh 'data=4096' needs 4096 devices"),
    (["train", "--dtype", "float16"], "argument --dtype: invalid choice: 'float16' (choose from"),
    (["train", "--source", "csv"], "argument --source: invalid choice: 'csv' (choose from"),
    (["train", "--batch-size", "0"], "argument --batch-size: must be a positive integer, got 0"),
    (["train", "--epochs", "-1"], "argument --epochs: must be a positive integer, got -1"),
    (["train", "--max-steps", "0"], "argument --max-steps: must be a positive integer, got 0"),
    (["train", "--save-every", "0"], "argument --save-every: must be a positive integer"),
    (["train", "--train-limit", "-5"], "argument --train-limit: must be a positive integer"),
    (["train", "--adapter-size", "0"], "argument --adapter-size: must be a positive integer"),
    (["train", "--rank", "0"], "argument --rank: must be a positive integer, got 0"),
    (["train", "--rank", "2.5"], "argument --rank: '2.5' is not an integer"),
    (["train", "--alpha", "0"], "argument --alpha: must be a positive number, got 0"),
    (["train", "--lr", "-0.001"], "argument --lr: must be a positive number, got -0.001"),
    (["train", "--lr", "nan"], "argument --lr: must be a finite number, got nan"),
    (["train", "--lr", "fast"], "argument --lr: 'fast' is not a number"),
    (["train", "--lora-dropout", "1"], "argument --lora-dropout: must be a number in [0, 1)"),
    (["train", "--weight-decay", "-0.1"], "argument --weight-decay: must be a number >= 0"),
    (["train", "--max-grad-norm", "0"], "argument --max-grad-norm: must be a positive number"),
    (["train", "--max-length", "2"], "argument --max-length: must be an integer >= 4, got 2"),
    (["train", "--seed", "-1"], "argument --seed: must be an integer >= 0, got -1"),
    (["compare", "--methods", "full,lroa"], "--methods: unknown ['lroa']; choose from"),
    (["info", "--num-labels", "0"], "argument --num-labels: must be a positive integer"),
    # limits that need the model or the data: checked before the first step
    ([*TRAIN, "--rank", "64"], "--rank 64 is larger than the query layer of {base} allows: "
                               "it maps 32 -> 32 features, so its update has rank at most 32"),
    ([*TRAIN, "--targets", "intermediate", "--rank", "48"],
     "--rank 48 is larger than the intermediate layer"),
    ([*TRAIN, "--max-length", "100"], "--max-length 100 is longer than the 64 positions of"),
    ([*TRAIN, "--batch-size", "128"], "--batch-size 128 is larger than the 96 training examples"),
    ([*TRAIN, "--train-limit", "8"], "--batch-size 16 is larger than the 8 training examples"),
    ([*TRAIN, "--data-dir", "{tmp}/noglue"],
     "missing {tmp}/noglue/SST-2/train.tsv, {tmp}/noglue/SST-2/dev.tsv (found in "
     "{tmp}/noglue/SST-2: no such folder); the GLUE layout is <dir>/SST-2/train.tsv"),
    ([*TRAIN, "--task", "rte", "--data-dir", "{tmp}/halfglue"],
     "missing {tmp}/halfglue/RTE/dev.tsv (found in {tmp}/halfglue/RTE: ['train.tsv'])"),
    ([*TRAIN, "--model", "{tmp}/nomodel"], "model '{tmp}/nomodel' is neither 'minilm' nor a "
                                           "directory"),
    ([*TRAIN, "--resume"], "--resume: no {tmp}/run/state.safetensors to resume from"),
    ([*TRAIN, "--out", "{tmp}/afile/run"], "{tmp}/afile/run: cannot create the run directory"),
    (["eval", "{tmp}/none.safetensors"], "{tmp}/none.safetensors: no such file"),
    (["eval", "{adapter}", "--file", "{tmp}/none.tsv"], "{tmp}/none.tsv: cannot read"),
    (["info", "--model", "tiny", "--rank", "40", "--targets", "all"],
     "--rank 40 is larger than the query layer of tiny allows"),
]


@pytest.fixture(scope="module")
def adapter_file(tiny_base, tiny_glue, tmp_path_factory):
    """A real LoRA adapter file of the tiny model (one short run)."""
    run = tmp_path_factory.mktemp("adapter_run")
    cfg = TrainConfig(task="sst2", model=str(tiny_base), epochs=1, batch_size=32,
                      max_length=16, rank=4, seed=0, max_steps=1)
    fit(cfg, run, data_dir=tiny_glue, progress=False)
    return run / "adapter.safetensors"


@pytest.mark.parametrize(("args", "message"), CLI_CASES,
                         ids=[" ".join(a[-2:]) for a, _ in CLI_CASES])
def test_bad_flag_exits_2_naming_the_flag(args, message, tiny_base, tiny_glue, adapter_file,
                                          tmp_path, capsys):
    (tmp_path / "afile").write_text("not a directory")
    (tmp_path / "halfglue" / "RTE").mkdir(parents=True)
    (tmp_path / "halfglue" / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\t"
                                                             "label\n0\ta\tb\tentailment\n")
    names = {"base": str(tiny_base), "glue": str(tiny_glue), "tmp": str(tmp_path),
             "adapter": str(adapter_file)}
    try:
        code = main([a.format(**names) for a in args])
    except SystemExit as e:  # argparse's own exit for a flag it rejects
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message.format(**names) in err
    assert "Traceback" not in err
    assert message.format(**names) in err.strip().splitlines()[-1]  # one line says it all


# --- TrainConfig (the library's side of the same checks) -------------------------------------


@pytest.mark.parametrize(("change", "field"), [
    ({"task": "sst3"}, "TrainConfig.task: unknown task 'sst3'"),
    ({"task": 3}, "TrainConfig.task must be a GLUE task name, got 3"),
    ({"epochs": 1.5}, "TrainConfig.epochs must be an integer, got 1.5"),
    ({"learning_rate": float("nan")}, "TrainConfig.learning_rate must be a finite number"),
    ({"learning_rate": 0.0}, "TrainConfig.learning_rate must be a positive number, got 0"),
    ({"alpha": float("inf")}, "TrainConfig.alpha must be a finite number, got inf"),
    ({"weight_decay": -1.0}, "TrainConfig.weight_decay must be a number >= 0"),
    ({"max_grad_norm": 0.0}, "TrainConfig.max_grad_norm must be a positive number"),
    ({"seed": -3}, "TrainConfig.seed must be an integer >= 0, got -3"),
    ({"source": "csv"}, "TrainConfig.source must be one of ('tsv', 'tfds'), got 'csv'"),
    ({"max_length": 3}, "TrainConfig.max_length must be at least 4"),
    ({"targets": "query"}, "TrainConfig.targets must be a non-empty tuple of names"),
    ({"lora_dropout": 1.0}, "TrainConfig.lora_dropout must be a number in [0, 1), got 1"),
])
def test_bad_train_config_names_the_field(change, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        TrainConfig(**change)


# --- GLUE TSV files -----------------------------------------------------------------------------

TSV_CASES = [
    ("sst2", "sentence\tlabel\ngood\t1\nbad\n", "x.tsv:3: expected at least 2 tab-separated "
                                                "columns, got 1"),
    ("cola", "gj04\t1\t\tfine\ngj04\t1\tfine\n", "x.tsv:2: expected 4 tab-separated columns, "
                                                 "got 3"),
    ("cola", "gj04\t1\t\tfine\ngj04\t1\t\tfine\textra\n", "x.tsv:2: expected 4 tab-separated "
                                                          "columns, got 5"),
    ("sst2", "sentence\tlabel\ngood\t7\n", "x.tsv:2: label '7' is not one of ('0', '1')"),
    ("sst2", "sentence\tlabel\ngood\t\n", "x.tsv:2: label '' is not one of ('0', '1')"),
    ("rte", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tyes\n",
     "x.tsv:2: label 'yes' is not one of ('entailment', 'not_entailment')"),
    ("stsb", "sentence1\tsentence2\tscore\na\tb\tfive\n", "x.tsv:2: score 'five' is not a number"),
    ("stsb", "sentence1\tsentence2\tscore\na\tb\tnan\n", "x.tsv:2: score 'nan' is not a finite"),
    ("stsb", "sentence1\tsentence2\tscore\na\tb\t-inf\n", "x.tsv:2: score '-inf' is not a finite"),
    ("sst2", "sentence\tlabel\n\ngood\t1\n", "x.tsv:2: empty line"),
    ("sst2", "sentence\tlabel\ngood\t1\n \t\n", "x.tsv:3: empty line"),
    ("sst2", b"sentence\tlabel\ngood\t1\nb\xffd\t0\n", "x.tsv:3: not valid UTF-8"),
    ("sst2", b"\xef\xbb\xbfsentence\tlabel\n\xc3\t0\n", "x.tsv:2: not valid UTF-8"),
    ("sst2", "sentence\tlabel\n" + "w " * MAX_LINE_CHARS + "\t1\n",
     "x.tsv:2: line of 200,002 characters (limit 100,000)"),
    ("sst2", "sentence\tlabel\r" + "good\t1\r" * 20000, "x.tsv:1: line of 140,015 characters"),
    ("sst2", "text\tlabel\ngood\t1\n", "x.tsv:1: header has no column 'sentence'"),
    ("mrpc", "Quality\t#1 String\n1\ta\n", "x.tsv:1: header has no column '#2 String'"),
    ("sst2", "", "x.tsv: empty file, expected a header line"),
    ("sst2", "sentence\tlabel\n", "x.tsv: no examples after the header"),
]


@pytest.mark.parametrize(("task", "content", "message"), TSV_CASES,
                         ids=[f"{t}:{m.split(': ', 1)[1][:30]}" for t, _, m in TSV_CASES])
def test_bad_tsv_names_file_and_line(task, content, message, tmp_path):
    p = tmp_path / "x.tsv"
    p.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(GlueDataError, match=re.escape(message)):
        read_tsv(p, get_task(task))


def test_a_missing_tsv_names_the_file(tmp_path):
    with pytest.raises(GlueDataError, match=r"nope.tsv: cannot read \(No such file"):
        read_tsv(tmp_path / "nope.tsv", get_task("sst2"))


# --- model directories --------------------------------------------------------------------------


def _edit_tensors(edit):
    def apply(model_dir):
        with safe_open(str(model_dir / "model.safetensors"), framework="numpy") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        edit(tensors)
        save_file(tensors, str(model_dir / "model.safetensors"))
    return apply


def _edit_config(**changes):
    def apply(model_dir):
        cfg = json.loads((model_dir / "config.json").read_text())
        cfg.update(changes)
        (model_dir / "config.json").write_text(json.dumps(cfg))
    return apply


def _write(name, data):
    def apply(model_dir):
        (model_dir / name).write_bytes(data)
    return apply


def _remove(name):
    return lambda model_dir: (model_dir / name).unlink()


Q = "bert.encoder.layer.0.attention.self.query"
MODEL_CASES = [
    (_remove("config.json"), "missing config.json"),
    (_remove("model.safetensors"), "missing model.safetensors (a Hugging Face model directory"),
    (_remove("tokenizer.json"), "no tokenizer.json; lora_jax needs the fast tokenizer"),
    (_write("config.json", b"{not json"), "config.json: not valid JSON"),
    (_write("config.json", b"[1, 2]"), "config.json: expected a JSON object, got list"),
    (_write("config.json", b"\xff\xfe"), "config.json: not valid JSON"),
    (_edit_config(model_type="gpt2"), "config.json: model_type 'gpt2' is not supported"),
    (_edit_config(hidden_size=None), "config.json: ModelConfig.hidden_size must be an integer"),
    (_edit_config(layer_norm_eps="small"), "config.json: field 'layer_norm_eps' is 'small'"),
    (_edit_config(num_attention_heads=5), "hidden_size=32 is not divisible by "
                                          "num_attention_heads=5"),
    (_edit_config(vocab_size=10), "shape mismatch: bert.embeddings.word_embeddings.weight: "
                                  "checkpoint (29, 32) vs model (10, 32)"),
    (_write("model.safetensors", b"\x00" * 64), "model.safetensors: cannot read safetensors"),
    (_edit_tensors(lambda t: t.pop(Q + ".bias")),
     "missing tensor(s) for ['bert/encoder/layer/0/attention/self/query/bias']"),
    (_edit_tensors(lambda t: t.update({Q + ".lora_A": np.zeros((4, 32), np.float32)})),
     f"unexpected tensor(s) ['{Q}.lora_A']"),
    (_edit_tensors(lambda t: t.update({Q + ".weight": np.zeros((32, 16), np.float32)})),
     f"shape mismatch: {Q}.weight: checkpoint (16, 32) (transposed) vs model (32, 32)"),
    (_edit_tensors(lambda t: t.update({Q + ".weight": np.zeros((32, 32), np.int64)})),
     f"tensor {Q}.weight has dtype int64, expected floating point"),
    (_write("tokenizer.json", b"{}"), "tokenizer.json: cannot read tokenizer"),
    (_edit_tensors(lambda t: t.update({"classifier.weight": np.zeros((2, 32), np.float32)})),
     "incomplete classifier head: has ['classifier/kernel'], lacks ['classifier/bias']"),
]


@pytest.mark.parametrize(("edit", "message"), MODEL_CASES,
                         ids=[m[:40] for _, m in MODEL_CASES])
def test_bad_model_directory_names_the_file(edit, message, tiny_base, tmp_path):
    model_dir = shutil.copytree(tiny_base, tmp_path / "model")
    edit(model_dir)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(model_dir)
        load_tokenizer(model_dir)
    assert message in str(e.value)
    assert str(model_dir) in str(e.value)


def test_tokenizer_larger_than_the_embedding_table_is_refused(tiny_base, tmp_path):
    """Ids past the table would be clamped silently: the two files are from different models."""
    model_dir = shutil.copytree(tiny_base, tmp_path / "model")
    _edit_config(vocab_size=20)(model_dir)
    with pytest.raises(CheckpointError, match=r"tokenizer.json: the tokenizer has 29 tokens but "
                                              r".*config.json says vocab_size 20"):
        load_tokenizer(model_dir)


# --- adapter files ------------------------------------------------------------------------------


def _rewrite(adapter, dest, tensors=None, meta=None, raw_meta=None):
    with safe_open(str(adapter), framework="numpy") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        m = json.loads(f.metadata()[META_KEY])
    if tensors:
        tensors(t)
    if meta:
        meta(m)
    metadata = {META_KEY: raw_meta if raw_meta is not None else json.dumps(m)}
    save_file(t, str(dest), metadata=None if raw_meta == "" else metadata)


A = "lora/bert/encoder/layer/0/attention/self/query/a"
ADAPTER_CASES = [
    ("truncated", lambda src, dst: dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2]),
     "not a readable safetensors file"),
    ("empty", lambda src, dst: dst.write_bytes(b""), "not a readable safetensors file"),
    ("pickle", lambda src, dst: dst.write_bytes(pickle.dumps({A: np.zeros((32, 4))})),
     "not a readable safetensors file"),
    ("no metadata", lambda src, dst: _rewrite(src, dst, raw_meta=""),
     "no 'lora_jax' metadata; not a lora_jax file"),
    ("metadata not JSON", lambda src, dst: _rewrite(src, dst, raw_meta="{oops"),
     "metadata is not valid JSON"),
    ("metadata a list", lambda src, dst: _rewrite(src, dst, raw_meta="[]"),
     "unknown format 'list' (expected 'lora_jax/1')"),
    ("wrong format", lambda src, dst: _rewrite(src, dst, meta=lambda m: m.update(format="v0")),
     "unknown format 'v0'"),
    ("no method", lambda src, dst: _rewrite(src, dst, meta=lambda m: m.pop("method")),
     "metadata lacks 'method'"),
    ("bad method", lambda src, dst: _rewrite(src, dst, meta=lambda m: m.update(method="lroa")),
     "metadata field 'method' is 'lroa', not one of"),
    ("bad fingerprint", lambda src, dst: _rewrite(
        src, dst, meta=lambda m: m.update(base_fingerprint=7)),
     "metadata field 'base_fingerprint' is 7, not a string"),
    ("train_config a string", lambda src, dst: _rewrite(
        src, dst, meta=lambda m: m.update(train_config="rank=4")),
     "metadata field 'train_config' is str, expected dict"),
    ("train_config rank 0", lambda src, dst: _rewrite(
        src, dst, meta=lambda m: m["train_config"].update(rank=0)),
     "metadata field 'train_config' is not a valid run config (TrainConfig.rank must be"),
    ("method disagrees", lambda src, dst: _rewrite(
        src, dst, meta=lambda m: m.update(method="bitfit")),
     "metadata says method 'bitfit' but its train_config says 'lora'"),
    ("labels not strings", lambda src, dst: _rewrite(
        src, dst, meta=lambda m: m.update(labels=[0, 1])),
     "metadata field 'labels' must list strings"),
    ("wrong dtype", lambda src, dst: _rewrite(
        src, dst, tensors=lambda t: t.update({A: t[A].astype(np.float16)})),
     f"tensor {A} is float16(32, 4), expected float32(32, 4)"),
    ("wrong shape", lambda src, dst: _rewrite(
        src, dst, tensors=lambda t: t.update({A: t[A][:, :2].copy()})),
     f"tensor {A} is float32(32, 2), expected float32(32, 4)"),
    ("missing tensor", lambda src, dst: _rewrite(src, dst, tensors=lambda t: t.pop(A)),
     f"tensors do not match method 'lora' on this model: missing ['{A}']"),
    ("extra tensor", lambda src, dst: _rewrite(
        src, dst, tensors=lambda t: t.update({"lora/extra/a": np.zeros(2, np.float32)})),
     "unexpected ['lora/extra/a']"),
    ("NaN values", lambda src, dst: _rewrite(
        src, dst, tensors=lambda t: t.update({A: np.full_like(t[A], np.nan)})),
     f"tensor {A} holds NaN or infinite values"),
    ("another base model", lambda src, dst: _rewrite(
        src, dst, meta=lambda m: m.update(base_fingerprint="0123456789abcdef")),
     "adapter was trained on base model"),
]


@pytest.mark.parametrize(("name", "make", "message"), ADAPTER_CASES,
                         ids=[c[0] for c in ADAPTER_CASES])
def test_bad_adapter_file_names_file_and_problem(name, make, message, adapter_file, tmp_path):
    bad = tmp_path / "bad.safetensors"
    make(adapter_file, bad)
    with pytest.raises(CheckpointFileError) as e:
        restore(bad)
    assert str(bad) in str(e.value) and message in str(e.value)


def test_adapter_loaded_onto_another_base_model_names_both(adapter_file, tmp_path):
    other = write_tiny_checkpoint(tmp_path / "other", seed=1)
    with pytest.raises(CheckpointFileError, match=r"adapter.safetensors: adapter was trained on "
                                                  r"base model .* but the base given has"):
        restore(adapter_file, model=str(other))


def test_a_truncated_training_state_refuses_to_resume(tiny_base, tiny_glue, tmp_path):
    cfg = TrainConfig(task="sst2", model=str(tiny_base), epochs=1, batch_size=32,
                      max_length=16, rank=4)
    fit(cfg, tmp_path, data_dir=tiny_glue, progress=False, stop_after_steps=1)
    state = tmp_path / "state.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointFileError, match="state.safetensors: not a readable safetensors"):
        fit(cfg, tmp_path, data_dir=tiny_glue, progress=False, resume=True)


# --- property-based: arbitrary bytes end in our errors, nothing else ----------------------------

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
TSV_ALPHABET = st.sampled_from(list("ab 01\t\n\r\"'.-") + ["\ufeff", "é", "nan", "label",
                                                            "sentence", "score", "entailment"])


@FAST
@given(data=st.one_of(st.binary(max_size=300),
                      st.lists(TSV_ALPHABET, max_size=60).map(lambda x: "".join(x).encode())),
       task=st.sampled_from(["sst2", "cola", "stsb", "mrpc", "rte"]))
def test_tsv_reader_never_fails_with_anything_but_glue_data_error(data, task):
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "f.tsv")
        with open(p, "wb") as f:
            f.write(data)
        try:
            ex = read_tsv(p, get_task(task))
        except GlueDataError as e:
            assert "f.tsv" in str(e)
            return
    assert len(ex) == len(ex.labels) > 0
    assert ex.labels.dtype == (np.float32 if task == "stsb" else np.int32)


@pytest.fixture(scope="module")
def adapter_template(adapter_file, tiny_base):
    import jax

    from lora_jax.train import build_model

    _, meta = read_adapter(adapter_file)
    pre = load_pretrained(tiny_base, num_labels=2)
    cfg = adapter_train_config(adapter_file, meta)
    template = init_variables(build_model(pre, cfg), pre.params, cfg.method, jax.random.key(0))
    return template, pre.fingerprint


def _load(path, template, fingerprint):
    loaded = read_adapter(path)
    adapter_train_config(path, loaded[1])
    return apply_adapter(path, template, fingerprint, template, loaded=loaded)


@FAST
@given(data=st.binary(max_size=400))
def test_adapter_loader_on_arbitrary_bytes(data, adapter_template):
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "a.safetensors")
        with open(p, "wb") as f:
            f.write(data)
        with pytest.raises(CheckpointFileError):  # random bytes are never a valid adapter
            _load(p, *adapter_template)


@FAST
@given(cut=st.integers(min_value=0), flips=st.lists(st.tuples(st.integers(min_value=0),
                                                              st.integers(1, 255)), max_size=4))
def test_adapter_loader_on_damaged_real_files(cut, flips, adapter_file, adapter_template):
    """A real adapter, truncated and with some bytes changed: loads (a flip inside the tensor
    data only changes numbers) or fails with CheckpointFileError."""
    blob = bytearray(adapter_file.read_bytes())
    blob = blob[: len(blob) - cut % 64] if cut % 3 else blob
    for pos, x in flips:
        if blob:
            blob[pos % len(blob)] ^= x
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "a.safetensors")
        with open(p, "wb") as f:
            f.write(bytes(blob))
        try:
            _load(p, *adapter_template)
        except CheckpointFileError as e:
            assert "a.safetensors" in str(e)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
FIELDS = ["format", "method", "base_fingerprint", "task", "train_config", "labels",
          "base_model", "model_config"]


@FAST
@given(changes=st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=3),
       config_changes=st.dictionaries(st.sampled_from(["rank", "alpha", "targets", "task",
                                                       "epochs", "method", "lora_dropout",
                                                       "learning_rate", "dtype", "model"]),
                                      JSON, max_size=2))
def test_adapter_loader_on_arbitrary_metadata(changes, config_changes, adapter_file,
                                              adapter_template):
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "a.safetensors")

        def edit(m):
            m["train_config"].update(config_changes)
            m.update(changes)

        try:
            _rewrite(adapter_file, p, meta=edit)
        except (TypeError, ValueError):  # not JSON-serialisable (NaN is, as a JS extension)
            return
        try:
            _load(p, *adapter_template)
        except CheckpointFileError as e:
            assert "a.safetensors" in str(e)
