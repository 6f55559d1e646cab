"""Shared pieces of the benchmarks: the synthetic batch, states per method, timing, output."""

from __future__ import annotations

import itertools
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax import (
    LoRAConfig,
    create_train_state,
    get_method,
    init_variables,
    make_optimizer,
    trainable_labels,
)
from lora_jax.compare import machine_info
from lora_jax.lora import LORA as LORA_COLLECTION
from lora_jax.models import ADAPTERS, SequenceClassifier
from lora_jax.parallel import shard_batch
from lora_jax.run import _set_up

RESULTS = Path(__file__).resolve().parents[1] / "results"
LORA = LoRAConfig(rank=8, alpha=16.0, targets=("query", "value"))


def synthetic_batch(batch: int, seq: int, seed: int = 0) -> dict:
    """The peer benchmark's batch: ids uniform in [1000, 30000), no padding, random labels."""
    rng = np.random.default_rng(seed)
    return {
        "input_ids": jnp.asarray(rng.integers(1000, 30000, (batch, seq)), jnp.int32),
        "token_type_ids": jnp.zeros((batch, seq), jnp.int32),
        "attention_mask": jnp.ones((batch, seq), jnp.int32),
        "label": jnp.asarray(rng.integers(0, 2, batch), jnp.int32),
    }


def described(doc: str) -> str:
    """A script's ``--help`` description: its docstring's first paragraph, on one line (the
    first line alone often stops mid-sentence)."""
    return " ".join(doc.split("\n\n")[0].split())


def no_dropout(cfg):
    return cfg.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def make_state(pre, method: str, *, lora: LoRAConfig = LORA, adapter_size: int = 64,
               dtype_cfg=None, seed: int = 0):
    """A train state for ``method`` on the pretrained ``pre`` (dropout off, like the peer)."""
    cfg = no_dropout(dtype_cfg or pre.config)
    creates = get_method(method).creates
    model = SequenceClassifier(cfg, lora if creates == LORA_COLLECTION else None,
                               adapter_size if creates == ADAPTERS else None)
    variables = init_variables(model, pre.params, method, jax.random.key(seed))
    tx = make_optimizer(trainable_labels(variables, method), learning_rate=1e-4,
                        total_steps=10_000)
    return create_train_state(model.apply, variables, method, tx, jax.random.key(seed + 1))


def block(x):
    return jax.block_until_ready(x)


def timed(fn, n: int) -> list[float]:
    """Wall-clock ms of ``n`` calls of ``fn`` (each waits for its result)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        block(fn())
        out.append(1000 * (time.perf_counter() - t0))
    return out


def matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    """The machine's jitted f32 matmul throughput (n^3 multiply-adds), median of ``reps``."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    block(f(a, a))
    ms = statistics.median(timed(lambda: f(a, a), reps))
    return 2 * n**3 / (ms / 1000) / 1e9


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(record: dict, out: str | Path | None) -> None:
    """Print one JSON line (and append it to ``out``)."""
    line = json.dumps(record, sort_keys=True)
    print(line, flush=True)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def header(kind: str, config: dict) -> dict:
    # paths in the command line are recorded relative to the working directory: results are
    # committed, and a machine's own paths do not belong in them
    argv = [os.path.relpath(a) if os.path.isabs(a) else a for a in sys.argv[1:]]
    return {"benchmark": kind, "machine": machine_info(), "config": config,
            "argv": argv, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def placed_epoch(cfg, pre, data_dir=None, limit: int | None = None):
    """``fit``'s set-up for ``cfg`` (in a throw-away directory), the first ``limit`` batches of
    its first epoch (all of them by default) as host arrays and placed on its mesh, and the
    state after one pass over them, so that every batch shape is compiled. Returns
    ``(run, host, placed, state)``; time further passes with ``steps``."""
    with tempfile.TemporaryDirectory() as tmp:  # _set_up writes config.json there
        run = _set_up(cfg, Path(tmp) / "run", data_dir=data_dir, pretrained=pre, resume=False,
                      overwrite=False, mesh=None, log_every=1)
    host = list(itertools.islice(run.train_batches.epoch(1), limit))
    placed = [shard_batch({k: v for k, v in b.items() if k != "index"}, run.mesh)
              for b in host]
    return run, host, placed, steps(run, run.state, placed)


def steps(run, state, placed):
    """``run``'s jitted step over the placed batches, back to back; the state after them
    (the step donates its input), once the device is done."""
    for b in placed:
        state, metrics = run.train_step(state, b)
    return jax.block_until_ready((state, metrics))[0]
