"""Train-step benchmark: every method on the MiniLM checkpoint, interleaved, medians.

For each sequence length T, every method's step is compiled once (XLA's FLOP count and memory
accounting are read from the compiled step), then the methods are timed in rounds, A B C A B C,
so that machine noise hits them alike. One JSON line per (method, T), plus one for the machine's
jitted f32 matmul peak, measured in the same run, so achieved GFLOP/s is a fraction of it.

    python benchmarks/train_step.py                       # T = 32, 64, 128; all methods
    python benchmarks/train_step.py --seqs 64 --methods lora,full --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
from common import (
    RESULTS,
    block,
    described,
    emit,
    header,
    make_state,
    matmul_peak_gflops,
    peak_rss_mib,
    synthetic_batch,
    timed,
)

from lora_jax import (
    ModelConfig,
    SequenceClassifier,
    count_params,
    load_pretrained,
    train_step,
    tree_bytes,
)


def model_for(name: str):
    """The pretrained MiniLM, or a RoBERTa-base-shaped model with random weights (the step's
    speed does not depend on the values)."""
    if name == "minilm":
        return load_pretrained("minilm")
    cfg = ModelConfig.roberta_base(num_labels=2)
    params = SequenceClassifier(cfg).init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))
    return SimpleNamespace(config=cfg, params=params["params"])


def main() -> None:
    p = argparse.ArgumentParser(description=described(__doc__))
    p.add_argument("--methods", default="full,lora,bitfit,head,adapter")
    p.add_argument("--seqs", default="32,64,128")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="timed steps per method per round")
    p.add_argument("--out", default=str(RESULTS / "train_step.jsonl"))
    p.add_argument("--model", choices=("minilm", "roberta-base"), default="minilm",
                   help="minilm (pretrained) or roberta-base (random weights: speed only)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute dtype (bfloat16: for a GPU or TPU)")
    args = p.parse_args()
    methods = args.methods.split(",")
    pre = model_for(args.model)
    peak = matmul_peak_gflops()
    emit({**header("matmul_peak", {"n": 2048}), "gflops": peak}, args.out)
    for seq in [int(s) for s in args.seqs.split(",")]:
        batch = synthetic_batch(args.batch, seq)
        states, info = {}, {}
        for m in methods:
            state = make_state(pre, m, dtype_cfg=pre.config.replace(dtype=args.dtype))
            t0 = time.perf_counter()
            compiled = train_step.lower(state, batch).compile()
            compile_s = time.perf_counter() - t0
            mem = compiled.memory_analysis()
            info[m] = {
                "compile_s": compile_s,
                "flops": compiled.cost_analysis()["flops"],
                "xla_memory": {k: int(getattr(mem, f"{k}_size_in_bytes"))
                               for k in ("argument", "output", "temp", "alias")},
                "optimizer_state_bytes": tree_bytes(state.opt_state),
                "trainable_params": count_params(state.variables, m),
                "trainable_params_without_head": count_params(state.variables, m,
                                                              include_head=False),
            }
            state, metrics = train_step(state, batch)  # the first execution
            info[m]["loss_first"] = float(metrics["loss"])
            states[m] = state
        times = {m: [] for m in methods}
        for _ in range(args.rounds):
            for m in methods:
                def step(m=m, states=states, batch=batch):
                    states[m], metrics = train_step(states[m], batch)
                    return metrics["loss"]
                times[m] += timed(step, args.steps)
        for m in methods:
            med = statistics.median(times[m])
            loss_last = float(block(train_step(states[m], batch)[1]["loss"]))
            gflops = info[m]["flops"] / (med / 1000) / 1e9
            emit({**header("train_step", {"method": m, "batch": args.batch, "seq": seq,
                                          "lora": "r=8, alpha=16, query,value",
                                          "adapter_size": 64, "dropout": 0.0,
                                          "model": args.model, "dtype": args.dtype,
                                          "rounds": args.rounds, "steps": args.steps}),
                  **info[m], "step_ms_median": med, "step_ms_min": min(times[m]),
                  "examples_per_s": 1000 * args.batch / med,
                  "tokens_per_s": 1000 * args.batch * seq / med,
                  "gflops_achieved": gflops, "fraction_of_matmul_peak": gflops / peak,
                  "matmul_peak_gflops": peak, "peak_rss_MiB": peak_rss_mib(),
                  "loss_last": loss_last}, args.out)


if __name__ == "__main__":
    main()
