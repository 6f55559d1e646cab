"""Inference latency (the LoRA paper's Table 1 on our model): base, merged LoRA, unmerged LoRA
and Houlsby adapters, at several batch sizes and lengths, interleaved, medians.

Merged LoRA is the base network with W' = W + (alpha/r) A B: the same compiled program, so it
should cost the same as the base. Unmerged LoRA runs the extra x @ A @ B products; adapters add
two small sequential layers per block, which the paper shows hurt at small batch sizes.

    python benchmarks/latency.py                 # batch 1, 8, 32 x T 32, 128
"""

from __future__ import annotations

import argparse
import statistics

import jax
from common import LORA, RESULTS, described, emit, header, no_dropout, synthetic_batch, timed

from lora_jax import SequenceClassifier, load_pretrained, merge, perturb, predict
from lora_jax.train import init_variables


def variants(pre, adapter_size: int = 64) -> dict:
    """name -> (apply_fn, variables), with non-zero adapters so they do real work."""
    cfg = no_dropout(pre.config)

    base = SequenceClassifier(cfg)
    lora_model = SequenceClassifier(cfg, LORA)
    lora_vars = init_variables(lora_model, pre.params, "lora", jax.random.key(0))
    lora_vars = {**lora_vars, "lora": perturb(lora_vars["lora"], jax.random.key(1), 0.01)}
    adapter_model = SequenceClassifier(cfg, None, adapter_size)
    adapter_vars = init_variables(adapter_model, pre.params, "adapter", jax.random.key(2))
    adapter_vars = {**adapter_vars,
                    "adapters": perturb(adapter_vars["adapters"], jax.random.key(3), 0.01)}
    return {
        "base": (base.apply, {"params": pre.params}),
        "lora_merged": (base.apply, merge(lora_vars, LORA)),
        "lora_unmerged": (lora_model.apply, lora_vars),
        "adapter": (adapter_model.apply, adapter_vars),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=described(__doc__))
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--seqs", default="32,128")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=10, help="timed calls per variant per round")
    p.add_argument("--out", default=str(RESULTS / "latency.jsonl"))
    args = p.parse_args()
    pre = load_pretrained("minilm")
    models = variants(pre)
    for b in [int(x) for x in args.batches.split(",")]:
        for t in [int(x) for x in args.seqs.split(",")]:
            batch = synthetic_batch(b, t)
            batch.pop("label")
            for fn, v in models.values():
                predict(fn, v, batch).block_until_ready()  # compile
            times = {name: [] for name in models}
            for _ in range(args.rounds):
                for name, (fn, v) in models.items():
                    times[name] += timed(lambda fn=fn, v=v, x=batch: predict(fn, v, x), args.reps)
            base_ms = statistics.median(times["base"])
            for name in models:
                med = statistics.median(times[name])
                emit({**header("latency", {"variant": name, "batch": b, "seq": t,
                                           "rounds": args.rounds, "reps": args.reps,
                                           "lora": "r=8, alpha=16, query,value",
                                           "adapter_size": 64}),
                      "ms_median": med, "ms_min": min(times[name]),
                      "pct_over_base": 100 * (med / base_ms - 1)}, args.out)


if __name__ == "__main__":
    main()
