"""PEFT interop for GPT-2: LoRA on the fused c_attn <-> PEFT's ``fan_in_fan_out=True`` form.

``peft_gpt2`` was written by real PEFT (``tools/make_gpt2_fixture.py``) on the random-weight
``gpt2_tiny``; ``peft_gpt2_export`` is lora_jax's export of an adapter on c_attn's query and
value parts, with the logits real PEFT computes after loading it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from lora_jax import LoRAConfig
from lora_jax.cli import main
from lora_jax.gpt2 import GPT2, load_gpt2
from lora_jax.peft import PeftFormatError
from lora_jax.peft_gpt2 import (
    export_peft_gpt2,
    import_peft_gpt2,
    read_gpt2_adapter,
    save_gpt2_adapter,
)
from lora_jax.trees import flatten, perturb

FIXTURES = Path(__file__).parent / "fixtures"
BASE = FIXTURES / "gpt2_tiny"
QV = LoRAConfig(rank=2, alpha=6.0, targets=("query", "value"))


@pytest.fixture(scope="module")
def pre():
    return load_gpt2(BASE)


def _logits(name):
    data = json.loads((FIXTURES / name / "logits.json").read_text())
    return jnp.array(data["input_ids"]), np.array(data["logits"])


def _qv_adapter(pre, tmp_path):
    ids, _ = _logits("peft_gpt2")
    v = GPT2(pre.config, QV).init({"params": jax.random.key(0), "lora": jax.random.key(1)}, ids)
    v = {"params": pre.params, "lora": perturb(v["lora"], jax.random.key(2), 0.3)}
    return v, save_gpt2_adapter(tmp_path / "qv.safetensors", v, QV, pre)


def test_a_real_peft_adapter_gives_peft_logits(pre):
    lora, variables, _ = import_peft_gpt2(FIXTURES / "peft_gpt2", pre)
    assert (lora.rank, lora.alpha, lora.targets) == (2, 6.0, ("c_attn",))
    ids, want = _logits("peft_gpt2")
    np.testing.assert_allclose(GPT2(pre.config, lora).apply(variables, ids), want, atol=1e-5)


def test_our_export_of_query_value_parts_gives_the_same_logits_in_real_peft(pre):
    export = FIXTURES / "peft_gpt2_export"
    config = json.loads((export / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True and config["target_modules"] == ["attn.c_attn"]
    assert (config["r"], config["lora_alpha"]) == (4, 12)  # two parts of rank 2, same scale
    d = pre.config.n_embd
    b = load_file(str(export / "adapter_model.safetensors"))[
        "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]  # (3d, 4)
    assert b.shape == (3 * d, 4) and not b[d:2 * d].any()  # the key rows are exactly zero
    assert not b[:d, 2:].any() and not b[2 * d:, :2].any()  # query rank 0-1, value rank 2-3
    lora, variables, _ = import_peft_gpt2(export, pre)
    ids, peft_logits = _logits("peft_gpt2_export")
    np.testing.assert_allclose(GPT2(pre.config, lora).apply(variables, ids), peft_logits,
                               atol=1e-5)


def test_round_trip_keeps_the_model(pre, tmp_path):
    v, adapter = _qv_adapter(pre, tmp_path)
    lora_tree, lora, cfg, meta = read_gpt2_adapter(adapter)
    assert lora == QV and cfg == pre.config and meta["base_fingerprint"] == pre.fingerprint
    out = export_peft_gpt2(adapter, tmp_path / "peft")
    lora2, v2, _ = import_peft_gpt2(out, pre)
    ids, _ = _logits("peft_gpt2")
    np.testing.assert_allclose(GPT2(pre.config, lora2).apply(v2, ids),
                               GPT2(pre.config, QV).apply(v, ids), atol=1e-6)
    # the whole-layer form exports to the same tensors again
    again = export_peft_gpt2(save_gpt2_adapter(tmp_path / "whole.safetensors", v2, lora2, pre),
                             tmp_path / "peft2")
    first, second = (load_file(str(d / "adapter_model.safetensors")) for d in (out, again))
    assert first.keys() == second.keys()
    for key, x in first.items():
        np.testing.assert_array_equal(second[key], x)


def test_the_command_line_exports_and_imports_gpt2(pre, tmp_path, capsys):
    _, adapter = _qv_adapter(pre, tmp_path)
    assert main(["export-peft", str(adapter), "--out", str(tmp_path / "peft")]) == 0
    capsys.readouterr()
    assert main(["import-peft", str(tmp_path / "peft"), "--model", str(BASE),
                 "--out", str(tmp_path / "back.safetensors")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["rank"], report["targets"]) == (4, ["c_attn"])
    # nothing the user has is written over without --overwrite
    assert main(["export-peft", str(adapter), "--out", str(tmp_path / "peft")]) != 0
    assert "--overwrite" in capsys.readouterr().err
    back = flatten(read_gpt2_adapter(tmp_path / "back.safetensors")[0])
    assert back["transformer/h/0/attn/c_attn/a"].shape == (pre.config.n_embd, 4)


def _edited(tmp_path, change):
    out = tmp_path / "peft"
    shutil.copytree(FIXTURES / "peft_gpt2", out)
    config = json.loads((out / "adapter_config.json").read_text())
    change(config)
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(fan_in_fan_out=False), "fan_in_fan_out=False"),
    (lambda c: c.update(task_type="SEQ_CLS"), "task_type 'SEQ_CLS'"),
    (lambda c: c.update(use_dora=True), "use_dora=True"),
    (lambda c: c.update(r=3), r"lora_A.weight has shape \(2, 32\), expected \(3, 32\)"),
    (lambda c: c.update(bias="all"), "bias='all'"),
], ids=["fan_in_fan_out", "task", "dora", "rank", "bias"])
def test_peft_options_we_cannot_represent_are_refused_by_name(pre, tmp_path, change, message):
    with pytest.raises(PeftFormatError, match=message):
        import_peft_gpt2(_edited(tmp_path, change), pre)


def test_a_bert_adapter_is_not_read_as_gpt2(tmp_path):
    from lora_jax.checkpoint import CheckpointFileError

    with pytest.raises(CheckpointFileError, match="not a GPT-2 adapter"):
        read_gpt2_adapter(FIXTURES / "hf_merge" / "sst2.safetensors")
