"""The matmul peak a step can hope for: f32 GFLOP/s of XLA, numpy (OpenBLAS) and, with
``--peer-python``, PyTorch, on the same square and step-shaped matmuls, in one run.

Run it once natively and once with the vector ISA limited, to check that a limit took effect
(an AVX-512 machine imitating an AVX2 laptop)::

    python benchmarks/matmul.py --peer-python .venv-peer/bin/python
    XLA_FLAGS=--xla_cpu_max_isa=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \\
        OPENBLAS_CORETYPE=Haswell python benchmarks/matmul.py --peer-python .venv-peer/bin/python

Each line of ``results/matmul.jsonl`` records the machine (its ISA and the XLA limit), the
environment variables that limit the others, and the median GFLOP/s per library and shape.
The shapes (batch x m x k x n) are 2048^3 and those of MiniLM's step at batch 32, T = 64: the
feed-forward matmuls (2048 tokens x 384 -> 1536 and back), the attention projections (384 ->
384), LoRA's x @ A (384 -> 8) and the attention products per head (384 = 32 x 12 batches of
64 x 32 @ 32 x 64 for Q K^T, 64 x 64 @ 64 x 32 for P V). The backward pass reads operands the
other way round: in a shape named ``... nt`` the second is stored transposed (``dX = dY @ W^T``:
W is kept (d_in, d_out)), in ``... tn`` the first (``dW = X^T @ dY``, over the 2048 tokens:
X is kept (tokens, d_in)).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from common import RESULTS, described, emit, header, timed

SHAPES = ((1, 2048, 2048, 2048), (1, 2048, 384, 1536), (1, 2048, 1536, 384),
          (1, 2048, 384, 384), (1, 2048, 384, 8), (384, 64, 32, 64), (384, 64, 64, 32))
# the feed-forward and projection products of the backward pass, one operand stored transposed
# (m x k x n): dX = dY @ W^T contracts over d_out, dW = X^T @ dY over the 2048 tokens
BACKWARD = ((2048, 1536, 384, "nt"), (2048, 384, 1536, "nt"), (2048, 384, 384, "nt"),
            (384, 2048, 1536, "tn"), (1536, 2048, 384, "tn"), (384, 2048, 384, "tn"))
LIMITS = ("XLA_FLAGS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OPENBLAS_CORETYPE")
TORCH = """
import json, statistics, sys, time, torch
out = {}
for bt, m, k, n in json.loads(sys.argv[1]):
    a, b = torch.randn(bt, m, k).squeeze(0), torch.randn(bt, k, n).squeeze(0)
    for _ in range(3): a @ b
    ts = []
    for _ in range(int(sys.argv[2])):
        t0 = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t0)
    name = (f"{bt}x" if bt > 1 else "") + f"{m}x{k}x{n}"
    out[name] = 2 * bt * m * k * n / statistics.median(ts) / 1e9
for m, k, n, layout in json.loads(sys.argv[3]):
    a = torch.randn(m, k) if layout == "nt" else torch.randn(k, m)
    b = torch.randn(n, k) if layout == "nt" else torch.randn(k, n)
    f = (lambda: a @ b.t()) if layout == "nt" else (lambda: a.t() @ b)
    for _ in range(3): f()
    ts = []
    for _ in range(int(sys.argv[2])):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    out[f"{m}x{k}x{n} {layout}"] = 2 * m * k * n / statistics.median(ts) / 1e9
print(json.dumps({"torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
                  "gflops": out}))
"""


def gflops(fn, flops: int, reps: int) -> float:
    fn()  # compile / warm up
    return flops / (statistics.median(timed(fn, reps)) / 1000) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=described(__doc__))
    p.add_argument("--peer-python", help="python of the peer's environment (adds PyTorch)")
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    result: dict[str, dict[str, float]] = {"xla": {}, "numpy": {}}
    dot = jax.jit(jnp.matmul)
    for bt, m, k, n in SHAPES:
        a = rng.standard_normal((bt, m, k) if bt > 1 else (m, k), dtype=np.float32)
        b = rng.standard_normal((bt, k, n) if bt > 1 else (k, n), dtype=np.float32)
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        name, flops = (f"{bt}x" if bt > 1 else "") + f"{m}x{k}x{n}", 2 * bt * m * k * n
        result["xla"][name] = gflops(lambda ja=ja, jb=jb: dot(ja, jb), flops, args.reps)
        result["numpy"][name] = gflops(lambda a=a, b=b: a @ b, flops, args.reps)
    for m, k, n, layout in BACKWARD:  # the same product, one operand stored transposed
        if layout == "nt":
            a = rng.standard_normal((m, k), dtype=np.float32)
            b = rng.standard_normal((n, k), dtype=np.float32)
            fn, np_fn = jax.jit(lambda a, b: a @ b.T), (lambda a=a, b=b: a @ b.T)
        else:
            a = rng.standard_normal((k, m), dtype=np.float32)
            b = rng.standard_normal((k, n), dtype=np.float32)
            fn, np_fn = jax.jit(lambda a, b: a.T @ b), (lambda a=a, b=b: a.T @ b)
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        name, flops = f"{m}x{k}x{n} {layout}", 2 * m * k * n
        result["xla"][name] = gflops(lambda fn=fn, ja=ja, jb=jb: fn(ja, jb), flops, args.reps)
        result["numpy"][name] = gflops(np_fn, flops, args.reps)
    peer = None
    if args.peer_python:
        out = subprocess.run([args.peer_python, "-c", TORCH, json.dumps(SHAPES),
                              str(args.reps), json.dumps(BACKWARD)],
                             check=True, capture_output=True, text=True)
        peer = json.loads(out.stdout.strip().splitlines()[-1])
        result["torch"] = peer.pop("gflops")
    emit({**header("matmul", {"shapes": [list(s) for s in SHAPES],
                              "backward": [list(s) for s in BACKWARD], "reps": args.reps}),
          "limits": {k: os.environ.get(k) for k in LIMITS}, "peer": peer,
          "gflops": {lib: {s: round(v, 1) for s, v in r.items()} for lib, r in result.items()}},
         RESULTS / "matmul.jsonl")


if __name__ == "__main__":
    sys.exit(main())
