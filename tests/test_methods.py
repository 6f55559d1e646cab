"""A method is a record: one defined in this file only, and registered, trains, saves,
restores, counts and merges through the public API, with no edit anywhere else."""

import numpy as np
import pytest

import lora_jax
from lora_jax import (
    Method,
    TrainConfig,
    count_params,
    export_merged,
    fit,
    flatten,
    get_method,
    load_pretrained,
    predict,
    register,
    restore,
)
from lora_jax.methods import FROZEN, HEAD, REGISTRY, TRAINABLE
from lora_jax.optim import split
from lora_jax.tokenizer import load_tokenizer

# LayerNorm-only tuning: the scales and shifts of every LayerNorm, and the head.
NORMS = Method("norms", ((HEAD, TRAINABLE), (r"^params/.*/LayerNorm/", TRAINABLE),
                         (r"^params/", FROZEN)), default_lr=3e-3,
               doc="every LayerNorm's scale and shift, and the head")


@pytest.fixture
def norms():
    register(NORMS)
    yield NORMS
    REGISTRY.pop(NORMS.name)


@pytest.mark.slow
def test_a_method_defined_here_trains_saves_restores_counts_and_merges(norms, tiny_base,
                                                                      tiny_glue, tmp_path):
    cfg = TrainConfig(task="sst2", method="norms", model=str(tiny_base), epochs=2,
                      batch_size=16, max_length=16)
    assert cfg.lr == 3e-3 and cfg.lora_config() is None  # from the record
    run = tmp_path / "run"
    result = fit(cfg, run, data_dir=str(tiny_glue), progress=False)
    trained = result.state.variables
    assert set(trained) == {"params"}  # the record creates no collection

    d, layers = 32, 2  # ModelConfig.tiny: embeddings' LayerNorm + two per block
    assert count_params(trained, "norms", include_head=False) == (1 + 2 * layers) * 2 * d
    assert count_params(trained, "norms") == (1 + 2 * layers) * 2 * d + d * 2 + 2

    base = load_pretrained(str(tiny_base), num_labels=2)
    frozen = flatten(split(trained, "norms")[1]["params"])
    assert frozen and all(np.array_equal(v, flatten(base.params)[k]) for k, v in frozen.items())
    moved = flatten(split(trained, "norms")[0]["params"])
    assert any(not np.array_equal(v, flatten(base.params)[k]) for k, v in moved.items()
               if "LayerNorm" in k)

    model, restored, meta, _ = restore(run / "adapter.safetensors")
    assert meta["method"] == "norms"
    tok = load_tokenizer(str(tiny_base), max_length=16)
    batch = tok(["the movie was very good", "awful plot"])
    logits = np.asarray(predict(model.apply, restored, batch))
    np.testing.assert_array_equal(logits, np.asarray(predict(model.apply, trained, batch)))

    assert get_method("norms").mergeable
    export_merged(run / "adapter.safetensors", tmp_path / "merged")
    merged = load_pretrained(str(tmp_path / "merged"))
    plain = merged.model()
    np.testing.assert_allclose(np.asarray(plain.apply({"params": merged.params}, **batch)),
                               logits, rtol=1e-6, atol=1e-6)


def test_the_command_line_counts_a_registered_method(norms, capsys):
    import json

    from lora_jax.cli import main

    assert main(["info", "--method", "norms", "--model", "tiny"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "norms" and report["lora"] is None
    assert report["trainable_params_without_head"] == (1 + 2 * 2) * 2 * 32


def test_a_record_is_checked_and_names_are_unique():
    with pytest.raises(ValueError, match="rules must be"):
        Method("bad", ((r"^params/", "frozn"),), default_lr=1e-3)
    with pytest.raises(ValueError, match="method 'lora' exists already"):
        register(Method("lora", ((r"^params/", FROZEN),), default_lr=1e-3))
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        get_method("nope")
    assert set(lora_jax.METHODS) <= set(REGISTRY)
