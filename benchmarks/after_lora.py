"""What LoRA's descendants cost: parameters, optimizer state, adapter file, train-step time and
inference latency merged and unmerged, for LoRA, DoRA, LoRA+, PiSSA and rsLoRA on MiniLM.

Every variant is the fair comparison's (``benchmarks/fair.py``'s ``VARIANTS``): DoRA, LoRA+ and
PiSSA at LoRA's r = 8 on query,value; rsLoRA at r = 64 beside LoRA at r = 64. Their quality is
measured there, cell by cell; this script measures the cost, on a synthetic batch (dropout off,
as the other speed benchmarks), the variants interleaved round by round, medians reported with
each variant's ratio to LoRA's in the same run.

Inference: DoRA merged is the base network with ``W' = m (W + sAB) / ||W + sAB||`` folded in,
the same program as the base, so it should cost the same; unmerged it also computes the norm of
every adapted (d_in, d_out) matrix on each call.

    python benchmarks/after_lora.py                     # train steps at T=128, latency at 1 and 32
    python benchmarks/after_lora.py --quick             # a smoke run (the test suite's)
"""

from __future__ import annotations

import argparse
import statistics

import jax
from common import RESULTS, block, described, emit, header, no_dropout, synthetic_batch, timed
from fair import VARIANTS

from lora_jax import SequenceClassifier, load_pretrained, merge, perturb, predict
from lora_jax.config import TrainConfig
from lora_jax.optim import count_params, split
from lora_jax.train import adapter_to_save, init_variables, new_train_state, train_step
from lora_jax.trees import tree_bytes

NAMES = ("lora", "dora", "loraplus", "pissa", "lora-r64", "rslora-r64")


def config(variant: str) -> TrainConfig:
    settings = {"rank": 8, "alpha": 16.0, "targets": ("query", "value"), **VARIANTS[variant]}
    return TrainConfig(task="rte", **settings)


def costs(pre, variant: str, steps: int) -> tuple[dict, object, object]:
    """The static costs of a variant and a train state for it (its model without dropout)."""
    cfg = config(variant)
    model = SequenceClassifier(no_dropout(pre.config), cfg.lora_config())
    state = new_train_state(model, pre.params, cfg, steps)
    saved, _ = adapter_to_save(state.variables, pre.params, cfg)
    record = {
        "trainable_params": count_params(state.variables, cfg.method),
        "trainable_params_without_head": count_params(state.variables, cfg.method,
                                                      include_head=False),
        "optimizer_state_bytes": tree_bytes(state.opt_state),
        "adapter_file_bytes": tree_bytes(split(saved, cfg.method)[0]),
        "scale": cfg.lora_config().scale,
    }
    return record, model, state


def step_times(pre, names, batch, rounds: int, reps: int) -> dict:
    states, records = {}, {}
    for name in names:
        records[name], _, states[name] = costs(pre, name, 10_000)
        states[name], _ = train_step(states[name], batch)  # compile
        block(states[name].step)
    times = {name: [] for name in names}
    for _ in range(rounds):  # interleaved: A B C A B C ...
        for name in names:
            def one(name=name):
                states[name], metrics = train_step(states[name], batch)
                return metrics["loss"]
            times[name] += timed(one, reps)
    for name in names:
        records[name]["step_ms_median"] = statistics.median(times[name])
    return records


def latency_variants(pre) -> dict:
    """name -> (apply_fn, variables): the base, LoRA and DoRA merged and unmerged, their
    adapters moved off their start so that they do real work."""
    cfg = no_dropout(pre.config)
    base = SequenceClassifier(cfg)
    out = {"base": (base.apply, {"params": pre.params})}
    for name in ("lora", "dora"):
        lora = config(name).lora_config()
        model = SequenceClassifier(cfg, lora)
        v = init_variables(model, pre.params, config(name).method, jax.random.key(0))
        v = {**v, "lora": perturb(v["lora"], jax.random.key(1), 0.01)}
        out[f"{name}_merged"] = (base.apply, merge(v, lora))
        out[f"{name}_unmerged"] = (model.apply, v)
    return out


def latency(pre, batches, seq: int, rounds: int, reps: int) -> list[dict]:
    models = latency_variants(pre)
    rows = []
    for b in batches:
        batch = synthetic_batch(b, seq)
        batch.pop("label")
        for fn, v in models.values():
            block(predict(fn, v, batch))  # compile
        times = {name: [] for name in models}
        for _ in range(rounds):
            for name, (fn, v) in models.items():
                times[name] += timed(lambda fn=fn, v=v, x=batch: predict(fn, v, x), reps)
        base = statistics.median(times["base"])
        for name in models:
            ms = statistics.median(times[name])
            rows.append({"variant": name, "batch": b, "seq": seq, "ms_median": ms,
                         "pct_over_base": 100 * (ms / base - 1)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=described(__doc__))
    p.add_argument("--batch", type=int, default=32, help="train batch size (default 32)")
    p.add_argument("--seq", type=int, default=128, help="sequence length (default 128)")
    p.add_argument("--latency-batches", default="1,32")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=4, help="timed train steps per variant per round")
    p.add_argument("--latency-reps", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="T=16, batch 4, 1 round: a smoke run")
    p.add_argument("--out", default=str(RESULTS / "after_lora" / "costs.jsonl"))
    args = p.parse_args()
    if args.quick:
        args.batch, args.seq, args.rounds, args.reps, args.latency_reps = 4, 16, 1, 1, 1
        args.latency_batches = "1"
    pre = load_pretrained("minilm")
    conf = {"batch": args.batch, "seq": args.seq, "rounds": args.rounds, "reps": args.reps,
            "latency_reps": args.latency_reps, "dropout": 0.0}
    head = header("after_lora", conf)
    steps = step_times(pre, NAMES, synthetic_batch(args.batch, args.seq), args.rounds, args.reps)
    for name, rec in steps.items():
        ratio = rec["step_ms_median"] / steps["lora"]["step_ms_median"]
        emit({**head, "kind": "train", "variant": name, **rec, "step_vs_lora": ratio}, args.out)
    batches = [int(x) for x in args.latency_batches.split(",")]
    for row in latency(pre, batches, args.seq, args.rounds, args.latency_reps):
        emit({**head, "kind": "inference", **row}, args.out)


if __name__ == "__main__":
    main()
