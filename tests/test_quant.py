"""QLoRA: NF4 / NF4 with double quantization / int8 storage of the frozen base, against their
definitions, and LoRA trained on such a base end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_batch

from lora_jax import LoRAConfig, SequenceClassifier, load_pretrained, merge
from lora_jax.adapters import restore
from lora_jax.checkpoint import CheckpointFileError, read_adapter
from lora_jax.cli import main
from lora_jax.config import TrainConfig
from lora_jax.optim import trainable_labels
from lora_jax.quant import (
    FORMATS,
    NF4_BLOCK,
    NF4_LEVELS,
    NF4_PAPER,
    dequantize,
    dequantize_params,
    format_of,
    nf4_levels,
    pack4,
    quantize,
    unpack4,
)
from lora_jax.run import fit
from lora_jax.train import init_variables
from lora_jax.trees import flatten, tree_bytes


def test_nf4_levels_are_the_papers_table():
    levels = nf4_levels()
    assert levels.shape == (16,) and levels[7] == 0.0 and levels[0] == -1 and levels[-1] == 1
    np.testing.assert_allclose(levels, NF4_PAPER, atol=3e-7, rtol=0)
    assert np.all(np.diff(levels) > 0)


def test_packing_round_trips_every_pair_of_codes():
    codes = jnp.asarray([(a, b) for a in range(16) for b in range(16)], jnp.uint8).reshape(-1)
    packed = pack4(codes)
    assert packed.dtype == jnp.uint8 and packed.shape == (256,)
    assert sorted(np.asarray(packed).tolist()) == list(range(256))  # one byte per pair
    np.testing.assert_array_equal(unpack4(packed), codes)


def weights(shape=(96, 64), seed=0):
    w = jax.random.normal(jax.random.key(seed), shape) * 0.05
    return w.at[3, 5].set(0.9)  # an outlier: its block's scale is large


def test_nf4_error_is_within_half_a_level_gap_of_each_block_scale():
    w = weights()
    q = quantize(w, "nf4")
    assert q["codes"].shape == (96, 32) and q["absmax"].shape == (96 * 64 // NF4_BLOCK,)
    err = np.abs(np.asarray(dequantize(q, "nf4") - w)).reshape(-1, NF4_BLOCK)
    scale = np.abs(np.asarray(w)).reshape(-1, NF4_BLOCK).max(axis=1, keepdims=True)
    half_gap = np.diff(NF4_LEVELS).max() / 2
    assert np.all(err <= scale * half_gap + 1e-7)
    # and each value is its block's scale times its nearest level, so every block's largest
    # entry is exact
    flat = np.asarray(w).reshape(-1, NF4_BLOCK)
    top = np.abs(flat).argmax(axis=1)
    back = np.asarray(dequantize(q, "nf4")).reshape(-1, NF4_BLOCK)
    np.testing.assert_allclose(back[np.arange(len(top)), top], flat[np.arange(len(top)), top],
                               rtol=1e-6)


def test_double_quantization_adds_at_most_half_an_int8_step_of_the_scales():
    w = weights((256, 128))
    q, dq = quantize(w, "nf4"), quantize(w, "nf4-dq")
    np.testing.assert_array_equal(q["codes"], dq["codes"])
    assert dq["absmax_codes"].dtype == jnp.int8
    absmax = q["absmax"]
    step = np.abs(np.asarray(absmax - absmax.mean())).max() / 127
    err = np.abs(np.asarray(dequantize(dq, "nf4-dq") - dequantize(q, "nf4")))
    assert err.max() <= step / 2 + 1e-7  # |level| <= 1 times the scale's error
    assert tree_bytes(dq) < tree_bytes(q)


def test_int8_error_is_within_half_a_step_per_output_channel():
    w = weights()
    q = quantize(w, "int8")
    assert q["codes"].dtype == jnp.int8 and q["scale"].shape == (64,)
    err = np.abs(np.asarray(dequantize(q, "int8") - w))
    assert np.all(err <= np.asarray(q["scale"]) / 2 + 1e-7)


def test_bytes_per_weight_of_each_format():
    w = weights((384, 1536))
    bits = {f: 8 * tree_bytes(quantize(w, f)) / w.size for f in FORMATS}
    assert bits["nf4"] == pytest.approx(4.5)
    assert bits["nf4-dq"] == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=1e-3)
    assert bits["int8"] == pytest.approx(8 + 32 / 384)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="unknown quantization format 'nf3'"):
        quantize(weights(), "nf3")
    with pytest.raises(ValueError, match="d_out even"):
        quantize(jnp.ones((4, 3)), "nf4")
    with pytest.raises(ValueError, match="TrainConfig.quantize must be one of"):
        TrainConfig(quantize="fp4")
    with pytest.raises(ValueError, match="TrainConfig.lora_init='pissa' with quantize='nf4'"):
        TrainConfig(quantize="nf4", lora_init="pissa")


# --- a quantized base ---------------------------------------------------------------------------


def logits(model, variables, batch):
    return model.apply(variables, batch["input_ids"], batch["token_type_ids"],
                       batch["attention_mask"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_quantized_base_with_b_zero_is_the_dequantized_model(fmt, tiny_base):
    float_base = load_pretrained(str(tiny_base), num_labels=2)
    pre = load_pretrained(str(tiny_base), num_labels=2, quantize=fmt)
    assert pre.fingerprint == float_base.fingerprint  # the original float weights'
    kernels = [p for p in flatten(pre.params) if p.endswith("/kernel")]
    assert kernels == ["classifier/kernel"]  # every encoder kernel is stored quantized
    assert format_of(pre.params["bert"]["pooler"]["dense"]) == fmt
    emb = pre.params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    assert emb.dtype == jnp.float32  # embeddings stay float
    lora = LoRAConfig(rank=4, alpha=8.0)
    net = SequenceClassifier(pre.config, lora)
    v = init_variables(net, pre.params, "lora", jax.random.key(0))
    batch = make_batch(pre.config)
    got = logits(net, v, batch)
    dequantized = {"params": dequantize_params(pre.params)}
    plain = SequenceClassifier(float_base.config)
    np.testing.assert_allclose(got, logits(plain, dequantized, batch), rtol=0, atol=1e-6)
    # and within what quantizing moved the logits: far from 0, far below the logits' size
    gap = float(jnp.abs(got - logits(plain, {"params": float_base.params}, batch)).max())
    assert 0 < gap < 0.1 * float(jnp.abs(got).max()) + 1e-3


def run_cfg(tiny_base, **kw):
    base = dict(task="sst2", model=str(tiny_base), epochs=1, batch_size=16, max_length=16,
                rank=4, alpha=8.0, learning_rate=1e-2, max_steps=3, quantize="nf4")
    return TrainConfig(**{**base, **kw})


def test_lora_on_an_nf4_base_trains_and_the_codes_stay_bit_identical(tiny_base, tiny_glue,
                                                                     tmp_path):
    cfg = run_cfg(tiny_base)
    result = fit(cfg, tmp_path / "run", data_dir=tiny_glue, progress=False)
    pre = load_pretrained(str(tiny_base), num_labels=2, quantize="nf4")
    end = flatten(result.state.variables)
    for path, x in flatten({"params": pre.params}).items():
        if not path.startswith("params/classifier/"):
            np.testing.assert_array_equal(end[path], x, err_msg=path)
    labels = flatten(trainable_labels(result.state.variables, "lora"))
    moments = sorted(x.size for x in jax.tree.leaves(result.state.opt_state) if x.ndim > 0)
    trainable = sorted(end[p].size for p, lab in labels.items() if lab == "trainable")
    assert moments == sorted(trainable * 2)  # no optimizer state for the codes or scales
    assert any(end[p].dtype == jnp.uint8 for p in end)
    meta = read_adapter(tmp_path / "run" / "adapter.safetensors")[1]
    assert meta["train_config"]["quantize"] == "nf4"
    assert meta["base_fingerprint"] == load_pretrained(str(tiny_base)).fingerprint
    assert not any("codes" in k for k in read_adapter(tmp_path / "run" /
                                                      "adapter.safetensors")[0])


def test_the_adapter_restores_on_its_format_only_and_merges_to_a_float_model(
        tiny_base, tiny_glue, tmp_path, capsys):
    fit(run_cfg(tiny_base), tmp_path / "run", data_dir=tiny_glue, progress=False)
    adapter = tmp_path / "run" / "adapter.safetensors"
    net, variables, _, pre = restore(adapter)
    assert pre.config.quantize == "nf4"
    with pytest.raises(CheckpointFileError, match="trained on a base stored as nf4, not int8"):
        restore(adapter, quantize="int8")
    with pytest.raises(CheckpointFileError, match="stored as nf4, not float32"):
        restore(adapter, quantize=None)
    batch = make_batch(pre.config, length=10)
    merged = merge(variables, net.lora)
    assert format_of(merged["params"]["bert"]["pooler"]["dense"]) is None  # float throughout
    plain = SequenceClassifier(pre.config.replace(quantize=None))
    np.testing.assert_allclose(logits(plain, merged, batch), logits(net, variables, batch),
                               rtol=1e-5, atol=1e-5)
    assert main(["merge", str(adapter), "--out", str(tmp_path / "merged")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "written as float weights" in out["note"]
    assert main(["merge", str(adapter), "--out", str(tmp_path / "m4"), "--quantize", "nf4"]) == 2
    assert "merging into a quantized model is refused" in capsys.readouterr().err
    assert not (tmp_path / "m4").exists()


def test_a_method_that_would_train_the_quantized_kernels_is_refused(tiny_base, tiny_glue,
                                                                    tmp_path):
    with pytest.raises(ValueError, match="method 'full' would train params/bert/.*quantized"):
        fit(run_cfg(tiny_base, method="full"), tmp_path / "run", data_dir=tiny_glue,
            progress=False)
    assert not (tmp_path / "run" / "adapter.safetensors").exists()
    fit(run_cfg(tiny_base, method="bitfit"), tmp_path / "bitfit", data_dir=tiny_glue,
        progress=False)  # BitFit's biases stay float: it trains on a quantized base
