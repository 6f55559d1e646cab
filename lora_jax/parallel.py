"""Training on a device mesh with ``jax.sharding``: data parallelism, and optionally the frozen
base weights sharded over a second axis (FSDP-style) while the small trainable leaves stay
replicated.

The train step does not change: ``lora_jax.run`` jits ``train_step`` with the shardings this
module returns, and XLA's SPMD partitioner compiles it for them (computation follows data).
This module only decides where each array lives, and never imports the trainer:

- the batch is split along its first axis over ``data``;
- a frozen leaf with two or more axes is split over ``model`` along its largest axis that the
  ``model`` size divides (each device holds 1/M of it; XLA gathers it where a matmul needs it);
- trainable leaves, their optimizer state, the step and the rng are replicated.

On one host, ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` simulates eight CPU devices
(the tests do this). On several hosts, call ``jax.distributed.initialize()`` first in every
process; ``jax.devices()`` then lists all hosts' devices and the same mesh spans them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lora_jax.methods import FROZEN
from lora_jax.optim import trainable_labels

AXES = ("data", "model")


def parse_mesh(spec: str | None, n_devices: int | None = None) -> dict[str, int]:
    """``"data=4,model=2"`` -> ``{"data": 4, "model": 2}``; ``None`` or ``""`` -> every device
    on ``data``. A mesh may use fewer devices than there are (the first ones), not more."""
    n = jax.device_count() if n_devices is None else n_devices
    if not spec:
        return {"data": n, "model": 1}
    sizes: dict[str, int] = {}
    for part in spec.split(","):
        name, eq, value = part.strip().partition("=")
        if not eq or name not in AXES:
            raise ValueError(f"--mesh: {part.strip()!r} is not AXIS=SIZE with AXIS one of "
                             f"{AXES} (e.g. 'data=4,model=2')")
        if name in sizes:
            raise ValueError(f"--mesh: axis {name!r} given twice in {spec!r}")
        try:
            size = int(value)
        except ValueError:
            raise ValueError(f"--mesh: size of {name!r} must be a positive integer, "
                             f"got {value!r}") from None
        if size <= 0:
            raise ValueError(f"--mesh: size of {name!r} must be a positive integer, got {size}")
        sizes[name] = size
    sizes = {"data": sizes.get("data", n // sizes.get("model", 1) or 1),
             "model": sizes.get("model", 1)}
    if math.prod(sizes.values()) > n:
        raise ValueError(f"--mesh {spec!r} needs {math.prod(sizes.values())} devices; "
                         f"this process sees {n} ({jax.default_backend()})")
    return sizes


def make_mesh(spec: str | None = None) -> Mesh:
    """A ``Mesh`` with axes ``('data', 'model')`` over all devices (see ``parse_mesh``)."""
    sizes = parse_mesh(spec)
    devices = jax.devices()[:math.prod(sizes.values())]
    return jax.make_mesh((sizes["data"], sizes["model"]), AXES, devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)  # XLA propagates


def _frozen_spec(shape: tuple[int, ...], model: int) -> P:
    """Split the largest axis that ``model`` divides; replicate small or indivisible leaves."""
    if model == 1 or len(shape) < 2:
        return P()
    for axis in sorted(range(len(shape)), key=lambda i: -shape[i]):
        if shape[axis] % model == 0:
            return P(*[("model" if i == axis else None) for i in range(len(shape))])
    return P()


def variable_shardings(variables: dict, method: str, mesh: Mesh) -> dict:
    """A ``NamedSharding`` per leaf of ``variables``: frozen leaves over ``model``, trainable
    leaves replicated."""
    labels = trainable_labels(variables, method)
    model = mesh.shape["model"]
    return jax.tree.map(
        lambda x, lab: NamedSharding(mesh, _frozen_spec(x.shape, model) if lab == FROZEN
                                     else P()), variables, labels)


def shard_state(state: Any, mesh: Mesh) -> Any:
    """``state`` (a ``TrainState``) placed on ``mesh``: variables by ``variable_shardings``,
    everything else replicated."""
    return jax.device_put(state, state_shardings(state, mesh))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Each array of ``batch`` split along its first axis over ``data``. The batch size must be
    a multiple of the ``data`` size."""
    data = mesh.shape["data"]
    out = {}
    for k, v in batch.items():
        if np.shape(v)[0] % data:
            raise ValueError(f"batch of {np.shape(v)[0]} rows does not split over the mesh's "
                             f"data axis of size {data}; use a batch size that is a multiple "
                             f"of {data}")
        spec = P("data", *([None] * (np.ndim(v) - 1)))
        out[k] = jax.device_put(v, NamedSharding(mesh, spec))
    return out


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Where a batch lives: split along its first axis over ``data``."""
    return NamedSharding(mesh, P("data"))


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """A pytree shaped like ``state`` with the ``NamedSharding`` of each leaf."""
    replicated = NamedSharding(mesh, P())
    return state.replace(
        step=replicated, variables=variable_shardings(state.variables, state.method, mesh),
        opt_state=jax.tree.map(lambda _: replicated, state.opt_state), rng=replicated)


def jit_on_mesh(step: Callable, state: Any, mesh: Mesh) -> Callable:
    """``step(state, batch) -> (state, metrics)`` (``train.train_step``) jitted for ``mesh``:
    the state keeps its layout from step to step (inputs and outputs pinned, its buffers
    donated), the batch is split over ``data`` and the metrics come back replicated. The
    computation is the step's own; only the placement is added."""
    shardings = state_shardings(state, mesh)
    return jax.jit(step, in_shardings=(shardings, batch_sharding(mesh)),
                   out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=0)
