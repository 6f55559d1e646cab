"""Training on a device mesh, and in bfloat16. The mesh runs happen in a subprocess with eight
simulated CPU devices (XLA's device count is fixed when jax starts)."""

import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from lora_jax.config import TrainConfig
from lora_jax.parallel import parse_mesh
from lora_jax.run import fit

MESH_RUNS = textwrap.dedent("""
    import json, sys
    import jax
    from lora_jax.config import TrainConfig
    from lora_jax.run import fit
    base, glue, out = sys.argv[1:4]
    report = {"devices": jax.device_count()}
    for method in ("lora", "full"):
        for spec in ("data=1", "data=8", "data=4,model=2"):
            cfg = TrainConfig(task="sst2", method=method, model=base, epochs=2, batch_size=16,
                              max_length=16, rank=4, lora_dropout=0.1, seed=0,
                              learning_rate=1e-2 if method == "lora" else 1e-3)
            r = fit(cfg, f"{out}/{method}-{spec}", data_dir=glue, progress=False, mesh=spec)
            v = r.state.variables
            kernel = v["params"]["bert"]["encoder"]["layer"]["0"]["intermediate"]["dense"]["kernel"]
            head = v["params"]["classifier"]["kernel"]
            report[f"{method} {spec}"] = {
                "losses": [loss for _, loss in r.losses],
                "accuracy": r.final["eval"]["accuracy"],
                "frozen_kernel_spec": str(kernel.sharding.spec),
                "frozen_kernel_shard_shape": list(kernel.addressable_shards[0].data.shape),
                "head_replicated": head.sharding.is_fully_replicated,
                "lora_replicated": all(x.sharding.is_fully_replicated
                                       for x in jax.tree.leaves(v.get("lora", {}))),
            }
    try:
        fit(TrainConfig(task="sst2", model=base, batch_size=15, max_length=16),
            f"{out}/odd", data_dir=glue, progress=False, mesh="data=8")
    except ValueError as e:
        report["odd_batch_error"] = str(e)
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def mesh_report(tiny_base, tiny_glue, tmp_path_factory):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    out = tmp_path_factory.mktemp("mesh")
    proc = subprocess.run([sys.executable, "-c", MESH_RUNS, str(tiny_base), str(tiny_glue),
                           str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("spec", ["data=8", "data=4,model=2"])
def test_a_mesh_gives_the_losses_of_one_device(mesh_report, method, spec):
    """Same data, same dropout masks; only the order of float additions differs."""
    assert mesh_report["devices"] == 8
    one, many = mesh_report[f"{method} data=1"], mesh_report[f"{method} {spec}"]
    assert len(many["losses"]) == len(one["losses"]) == 12
    np.testing.assert_allclose(many["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    assert many["accuracy"] == one["accuracy"]


@pytest.mark.slow
def test_frozen_weights_are_sharded_over_model_and_adapters_replicated(mesh_report):
    lora = mesh_report["lora data=4,model=2"]
    assert "model" in lora["frozen_kernel_spec"]
    assert lora["frozen_kernel_shard_shape"] in ([16, 64], [32, 32])  # (32, 64) split in two
    assert lora["lora_replicated"] and lora["head_replicated"]
    # data parallelism alone keeps every weight whole on every device
    assert "model" not in mesh_report["lora data=8"]["frozen_kernel_spec"]
    # full fine-tuning trains every weight: nothing is frozen, nothing is sharded over model
    assert "model" not in mesh_report["full data=4,model=2"]["frozen_kernel_spec"]


@pytest.mark.parametrize("spec, message", [
    ("data=3", "needs 3 devices"), ("batch=2", "AXIS=SIZE"), ("data=0", "positive integer"),
    ("data=two", "positive integer"), ("data=1,data=1", "given twice"), ("model", "AXIS=SIZE"),
])
def test_bad_mesh_specs_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_mesh(spec, n_devices=2)


def test_default_mesh_puts_every_device_on_data():
    assert parse_mesh(None, n_devices=8) == {"data": 8, "model": 1}
    assert parse_mesh("model=2", n_devices=8) == {"data": 4, "model": 2}


@pytest.mark.slow
def test_batch_that_does_not_split_over_data_fails_before_training(mesh_report):
    assert "batch_size 15 does not split over the mesh's data axis of size 8" in (
        mesh_report["odd_batch_error"])


def test_bfloat16_trains_and_keeps_parameters_in_float32(tiny_base, tiny_glue, tmp_path):
    cfg = TrainConfig(task="sst2", method="lora", model=str(tiny_base), epochs=8, batch_size=16,
                      max_length=16, rank=4, learning_rate=3e-2, warmup_ratio=0.0,
                      dtype="bfloat16")
    result = fit(cfg, tmp_path / "run", data_dir=tiny_glue, progress=False)
    losses = [loss for _, loss in result.losses]
    assert np.mean(losses[-6:]) < 0.7 * np.mean(losses[:6])
    dtypes = {x.dtype for x in jax.tree.leaves(result.state.variables)}
    assert dtypes == {np.dtype("float32")}
    assert {x.dtype for x in jax.tree.leaves(result.state.opt_state)
            if hasattr(x, "dtype") and x.ndim} <= {np.dtype("float32")}


def test_bfloat16_forward_computes_in_bfloat16_and_stays_close(tiny_cfg):
    from conftest import init_model, make_batch

    from lora_jax import LoRAConfig, SequenceClassifier

    lora = LoRAConfig(rank=4, alpha=8.0, targets=("query", "value"))
    model, variables = init_model(tiny_cfg, lora)
    variables = {**variables, "lora": jax.tree.map(lambda x: x + 0.05, variables["lora"])}
    batch = make_batch(tiny_cfg)
    args = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    f32 = model.apply(variables, *args)
    bf16_model = SequenceClassifier(tiny_cfg.replace(dtype="bfloat16"), lora)
    bf16 = bf16_model.apply(variables, *args)
    assert bf16.dtype == jax.numpy.bfloat16
    jaxpr = str(jax.make_jaxpr(lambda v: bf16_model.apply(v, *args))(variables))
    assert "bf16[4,12,32]" in jaxpr  # hidden states really are bfloat16
    np.testing.assert_allclose(np.asarray(bf16, np.float32), np.asarray(f32), atol=2e-2)


def test_unknown_dtype_names_the_field():
    message = "TrainConfig.dtype must be one of ('float32', 'bfloat16'), got 'float16'"
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(dtype="float16")
