"""QLoRA on MiniLM: the frozen base's bytes per storage format, the quantization error per layer,
and LoRA's train step (XLA's memory accounting and time) on each base.

Bytes are counted from the arrays (``tree_bytes``): float32, bfloat16 (every weight cast),
int8 (absmax per output channel), NF4 (blocks of 64) and NF4 with double-quantized scales, for
the encoder's dense kernels (what QLoRA quantizes) and for the rest (embeddings, biases,
LayerNorms, the head: kept float). The error of each kernel is ``||W - deq(q(W))||_F / ||W||_F``.
The step is LoRA r = 8 on query,value, batch 32, dropout off, the bases interleaved round by
round, medians; its memory is ``compiled.memory_analysis()`` of the jitted step.

The paper's arithmetic for a 65B model (Dettmers et al. 2023) is recomputed beside it from its
formulas and labelled as the paper's.

    python benchmarks/qlora.py               # T = 128, 5 rounds
    python benchmarks/qlora.py --quick       # a smoke run
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
from common import RESULTS, block, described, emit, header, no_dropout, synthetic_batch, timed

from lora_jax import LoRAConfig, SequenceClassifier, TrainConfig, load_pretrained
from lora_jax.compare import step_memory
from lora_jax.quant import FORMATS, dequantize, format_of, quantize
from lora_jax.train import new_train_state, train_step
from lora_jax.trees import flatten, tree_bytes, unflatten

BASES = ("float32", *FORMATS)
PAPER_65B = {  # Dettmers et al. 2023, Sections 1-3: their accounting, per parameter
    "params": 65e9,
    "full_16bit_bytes_per_param": 12,  # 16-bit weights and gradients + 32-bit Adam m, v (>780 GB)
    "nf4_dq_bits_per_param": 4 + 8 / 64 + 32 / (64 * 256),  # 4.127 bits
}


def _kernels(params: dict) -> dict[str, jax.Array]:
    """Flat path -> the encoder's dense kernels (what QLoRA stores quantized)."""
    return {p: x for p, x in flatten(params).items()
            if p.endswith("/kernel") and not p.startswith("classifier/")}


def base_bytes(pre, fmt: str) -> dict:
    """The frozen base's bytes in ``fmt``: its dense kernels and everything else."""
    flat = flatten(pre.params)
    kernels = _kernels(pre.params)
    rest = {p: x for p, x in flat.items() if p not in kernels}
    if fmt == "bfloat16":
        cast = lambda t: {p: x.astype(jnp.bfloat16) for p, x in t.items()}  # noqa: E731
        kernels, rest = cast(kernels), cast(rest)
    elif fmt != "float32":
        kernels = {p: quantize(x, fmt) for p, x in kernels.items()}
    k, r = tree_bytes(unflatten(kernels)), tree_bytes(unflatten(rest))
    n = sum(x.size for x in _kernels(pre.params).values())
    return {"format": fmt, "kernel_bytes": k, "other_bytes": r, "total_bytes": k + r,
            "kernel_bits_per_weight": 8 * k / n, "kernel_weights": n}


def errors(pre, fmt: str) -> dict:
    """Relative Frobenius error of every encoder kernel in ``fmt``, by role."""
    out = {}
    for path, w in _kernels(pre.params).items():
        back = dequantize(quantize(w, fmt), fmt)
        out[path] = float(jnp.linalg.norm(back - w) / jnp.linalg.norm(w))
    by_role: dict[str, list[float]] = {}
    for path, e in out.items():
        role = "/".join(path.split("/")[4:-1]) if "/layer/" in path else path.rsplit("/", 2)[-3]
        by_role.setdefault(role, []).append(e)
    return {"format": fmt, "mean": statistics.mean(out.values()), "max": max(out.values()),
            "by_role": {r: statistics.mean(v) for r, v in sorted(by_role.items())}}


def states(names, batch):
    """A LoRA train state on each base, the model without dropout."""
    out = {}
    for name in names:
        quant = None if name == "float32" else name
        pre = load_pretrained("minilm", quantize=quant)
        cfg = TrainConfig(task="sst2", quantize=quant)
        model = SequenceClassifier(no_dropout(pre.config), LoRAConfig())
        state = new_train_state(model, pre.params, cfg, 10_000)
        assert all(format_of(m) == quant for m in (pre.params["bert"]["pooler"]["dense"],))
        out[name] = state
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=described(__doc__))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=4, help="timed steps per base per round")
    p.add_argument("--quick", action="store_true", help="T = 16, batch 4, 1 round")
    p.add_argument("--out", default=str(RESULTS / "qlora" / "costs.jsonl"))
    args = p.parse_args()
    if args.quick:
        args.batch, args.seq, args.rounds, args.reps = 4, 16, 1, 1
    head = header("qlora", {"batch": args.batch, "seq": args.seq, "rounds": args.rounds,
                            "reps": args.reps, "lora": "r=8, alpha=16, query,value",
                            "dropout": 0.0})
    pre = load_pretrained("minilm")
    for fmt in ("float32", "bfloat16", *FORMATS):
        emit({**head, "kind": "bytes", **base_bytes(pre, fmt)}, args.out)
    for fmt in FORMATS:
        emit({**head, "kind": "error", **errors(pre, fmt)}, args.out)

    batch = synthetic_batch(args.batch, args.seq)
    st = states(BASES, batch)
    memory = {name: step_memory(s, batch) for name, s in st.items()}
    for name in st:
        st[name], _ = train_step(st[name], batch)  # compile
        block(st[name].step)
    times = {name: [] for name in st}
    for _ in range(args.rounds):
        for name in st:
            def one(name=name):
                st[name], metrics = train_step(st[name], batch)
                return metrics["loss"]
            times[name] += timed(one, args.reps)
    base_ms = statistics.median(times["float32"])
    for name in st:
        ms = statistics.median(times[name])
        emit({**head, "kind": "step", "base": name, "step_ms_median": ms,
              "step_vs_float": ms / base_ms, "memory": memory[name],
              "state_bytes": tree_bytes(st[name].variables)}, args.out)

    paper = PAPER_65B
    emit({**head, "kind": "paper_65b", **paper,
          "full_16bit_gb": paper["params"] * paper["full_16bit_bytes_per_param"] / 1e9,
          "base_16bit_gb": paper["params"] * 2 / 1e9,
          "base_nf4_dq_gb": paper["params"] * paper["nf4_dq_bits_per_param"] / 8 / 1e9},
         args.out)


if __name__ == "__main__":
    main()
