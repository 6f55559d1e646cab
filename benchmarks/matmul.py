"""The matmul peak a step can hope for: f32 GFLOP/s of XLA, numpy (OpenBLAS) and, with
``--peer-python``, PyTorch, on the same square and step-shaped matmuls, in one run.

Run it once natively and once with the vector ISA limited, to check that a limit took effect
(an AVX-512 machine imitating an AVX2 laptop)::

    python benchmarks/matmul.py --peer-python .venv-peer/bin/python
    XLA_FLAGS=--xla_cpu_max_isa=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \\
        OPENBLAS_CORETYPE=Haswell python benchmarks/matmul.py --peer-python .venv-peer/bin/python

Each line of ``results/matmul.jsonl`` records the machine (its ISA and the XLA limit), the
environment variables that limit the others, and the median GFLOP/s per library and shape.
The shapes: 2048^3, and MiniLM's largest step matmuls at batch 32, T = 64 (2048 tokens x 384
-> 1536 and back).
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
from common import RESULTS, emit, header, timed

SHAPES = ((2048, 2048, 2048), (2048, 384, 1536), (2048, 1536, 384))  # (m, k, n)
LIMITS = ("XLA_FLAGS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OPENBLAS_CORETYPE")
TORCH = """
import json, statistics, sys, time, torch
out = {}
for m, k, n in json.loads(sys.argv[1]):
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3): a @ b
    ts = []
    for _ in range(int(sys.argv[2])):
        t0 = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t0)
    out[f"{m}x{k}x{n}"] = 2 * m * k * n / statistics.median(ts) / 1e9
print(json.dumps({"torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
                  "gflops": out}))
"""


def gflops(fn, m: int, k: int, n: int, reps: int) -> float:
    fn()  # compile / warm up
    return 2 * m * k * n / (statistics.median(timed(fn, reps)) / 1000) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--peer-python", help="python of the peer's environment (adds PyTorch)")
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    result: dict[str, dict[str, float]] = {"xla": {}, "numpy": {}}
    dot = jax.jit(jnp.dot)
    for m, k, n in SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        name = f"{m}x{k}x{n}"
        result["xla"][name] = gflops(lambda ja=ja, jb=jb: dot(ja, jb), m, k, n, args.reps)
        result["numpy"][name] = gflops(lambda a=a, b=b: a @ b, m, k, n, args.reps)
    peer = None
    if args.peer_python:
        out = subprocess.run([args.peer_python, "-c", TORCH, json.dumps(SHAPES),
                              str(args.reps)], check=True, capture_output=True, text=True)
        peer = json.loads(out.stdout.strip().splitlines()[-1])
        result["torch"] = peer.pop("gflops")
    emit({**header("matmul", {"shapes": [list(s) for s in SHAPES], "reps": args.reps}),
          "limits": {k: os.environ.get(k) for k in LIMITS}, "peer": peer,
          "gflops": {lib: {s: round(v, 1) for s, v in r.items()} for lib, r in result.items()}},
         RESULTS / "matmul.jsonl")


if __name__ == "__main__":
    sys.exit(main())
