"""Correctness of sharded training on simulated devices (not speed): the LoRA train step of the
real MiniLM on meshes ``data=1``, ``data=8`` and ``data=4,model=2`` of eight simulated CPU
devices, same batches; reports the losses' largest difference from one device, where the frozen
weights live (the shard shape of one kernel) and the bytes of frozen weights per device.

    python benchmarks/mesh.py --steps 5      # writes results/mesh.jsonl

Eight host "devices" share this machine's cores, so the step times it prints say nothing about
real multi-device speed. On a GPU or TPU host, add --real-devices to use its devices instead.
"""

from __future__ import annotations

import argparse
import os
import sys

if "--real-devices" not in sys.argv:  # must happen before jax starts
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from common import RESULTS, described, emit, header, make_state, synthetic_batch  # noqa: E402

from lora_jax import load_pretrained  # noqa: E402
from lora_jax.parallel import jit_on_mesh, make_mesh, shard_batch, shard_state  # noqa: E402
from lora_jax.train import train_step  # noqa: E402


def frozen_bytes_per_device(state) -> int:
    """Bytes of 'params' leaves held by device 0 (sharded leaves count their shard only)."""
    dev = jax.devices()[0]
    total = 0
    for x in jax.tree.leaves(state.variables["params"]):
        total += sum(s.data.nbytes for s in x.addressable_shards if s.device == dev)
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=described(__doc__))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--method", default="lora", choices=["lora", "full"])
    p.add_argument("--meshes", default="data=1;data=8;data=4,model=2")
    p.add_argument("--real-devices", action="store_true", help="do not simulate 8 CPU devices")
    p.add_argument("--out", default=str(RESULTS / "mesh.jsonl"))
    args = p.parse_args()
    pre = load_pretrained("minilm", num_labels=2)
    batches = [synthetic_batch(32, 64, seed=i) for i in range(args.steps)]
    losses = {}
    for spec in args.meshes.split(";"):
        mesh = make_mesh(spec)
        state = shard_state(make_state(pre, args.method), mesh)
        step = jit_on_mesh(train_step, state, mesh)
        per_device = frozen_bytes_per_device(state)
        out = []
        for b in batches:
            state, metrics = step(state, shard_batch(b, mesh))
            out.append(float(metrics["loss"]))
        losses[spec] = out
        kernel = state.variables["params"]["bert"]["encoder"]["layer"]["0"]["intermediate"][
            "dense"]["kernel"]
        ref = losses[args.meshes.split(";")[0]]
        emit({**header("mesh", {"mesh": spec, "method": args.method, "steps": args.steps,
                                "batch": 32, "seq": 64, "devices": jax.device_count()}),
              "losses": out, "max_abs_diff_vs_first_mesh": float(np.max(np.abs(
                  np.array(out) - np.array(ref)))),
              "kernel_shape": list(kernel.shape),
              "kernel_shard_shape": list(kernel.addressable_shards[0].data.shape),
              "kernel_spec": str(kernel.sharding.spec),
              "params_bytes_on_device0": per_device}, args.out)


if __name__ == "__main__":
    main()
