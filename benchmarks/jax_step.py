"""One lora_jax train step configuration, timed; prints one JSON line shaped like the peer
benchmark's ``peft_step.py`` (``step_ms_median``, ``step_ms_min``, ...), so that
``../shared/bench/interleave.py`` can alternate the two in one sitting.

    python benchmarks/jax_step.py --mode lora --batch 32 --seq 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
from common import block, described, make_state, peak_rss_mib, synthetic_batch, timed

from lora_jax import count_params, load_pretrained, train_step


def main() -> None:
    p = argparse.ArgumentParser(description=described(__doc__))
    p.add_argument("--mode", choices=["lora", "full", "bitfit", "head", "adapter"],
                   default="lora")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (the first compiles)")
    args = p.parse_args()
    t0 = time.perf_counter()
    pre = load_pretrained("minilm")
    state = make_state(pre, args.mode)
    load_s = time.perf_counter() - t0
    batch = synthetic_batch(args.batch, args.seq)
    warm, losses = [], []
    for _ in range(args.warmup):
        t0 = time.perf_counter()
        state, m = train_step(state, batch)
        losses.append(float(m["loss"]))
        warm.append(time.perf_counter() - t0)
    holder = [state]

    def step():
        holder[0], metrics = train_step(holder[0], batch)
        return metrics["loss"]

    times = timed(step, args.steps)
    losses.append(float(block(step())))
    med = statistics.median(times)

    print(json.dumps({
        "impl": "lora_jax", "mode": args.mode, "batch": args.batch, "seq": args.seq,
        "step_ms_median": med, "step_ms_min": min(times), "step_ms_max": max(times),
        "examples_per_s": 1000 * args.batch / med,
        "tokens_per_s": 1000 * args.batch * args.seq / med,
        "trainable_params": count_params(holder[0].variables, args.mode),
        "total_params": count_params(holder[0].variables),
        "peak_rss_MiB": peak_rss_mib(), "first_step_s": warm[0] if warm else None,
        "warmup_s": warm, "load_s": load_s, "loss_first_last": [losses[0], losses[-1]],
        "jax": jax.__version__, "backend": jax.default_backend(),
    }))


if __name__ == "__main__":
    main()
