"""The training loop's throughput against the bare jitted step, in the same run.

``fit`` dispatches ``train_step`` asynchronously and reads the metrics back every
``log_every`` steps; between those reads the host only batches, places and logs. This measures
what that host work costs, on the same batches: ``fit`` trains two epochs and its timed windows
of the second epoch (every batch shape compiled by then) give the loop's examples per second;
the bare step runs one epoch to compile, then the same epoch's batches again, already on the
device, dispatched back to back. Rounds interleave bare and loop runs (A B C D A B C D), and
the report gives medians.

    python benchmarks/loop_overhead.py                      # MiniLM, SST-2, log_every 1,10,50
    python benchmarks/loop_overhead.py --log-every 1,10 --rounds 3 --train-limit 512
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jax
from common import RESULTS, described, emit, header, placed_epoch, steps

from lora_jax import TrainConfig, fit, load_pretrained


def bare(cfg: TrainConfig, pre, data_dir) -> float:
    """Examples/s of the jitted step alone over an epoch's batches, placed beforehand, each
    shape compiled by a first pass over them."""
    run, batches, placed, state = placed_epoch(cfg, pre, data_dir)
    t0 = time.perf_counter()
    steps(run, state, placed)
    return sum(float(b["weight"].sum()) for b in batches) / (time.perf_counter() - t0)


def loop(cfg: TrainConfig, pre, data_dir, log_every: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(cfg, Path(tmp) / "run", data_dir=data_dir, pretrained=pre,
                     progress=False, log_every=log_every)
    second = [w for w in result.windows if w["first_step"] > result.info["steps_per_epoch"]]
    return sum(w["examples"] for w in second) / sum(w["seconds"] for w in second)


def main() -> None:
    p = argparse.ArgumentParser(description=described(__doc__))
    p.add_argument("--model", default="minilm")
    p.add_argument("--task", default="sst2")
    p.add_argument("--method", default="lora")
    p.add_argument("--train-limit", type=int, default=1024)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--log-every", default="1,10,50")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data-dir")
    p.add_argument("--out", default=str(RESULTS / "loop_overhead.jsonl"))
    args = p.parse_args()
    cfg = TrainConfig(task=args.task, method=args.method, model=args.model, epochs=2,
                      train_limit=args.train_limit, eval_limit=64, max_length=args.max_length,
                      batch_size=args.batch_size)
    pre = load_pretrained(args.model, num_labels=2)
    every = [int(x) for x in args.log_every.split(",")]
    runs: dict[str, list[float]] = {"bare": [], **{f"log_every={k}": [] for k in every}}
    for _ in range(args.rounds):
        runs["bare"].append(bare(cfg, pre, args.data_dir))
        for k in every:
            runs[f"log_every={k}"].append(loop(cfg, pre, args.data_dir, k))
    med = {k: statistics.median(v) for k, v in runs.items()}
    emit({**header("loop_overhead", {**cfg.to_json(), "rounds": args.rounds,
                                     "backend": jax.default_backend()}),
          "examples_per_s": runs, "median_examples_per_s": med,
          "loop_over_bare": {k: med[k] / med["bare"] for k in med if k != "bare"}}, args.out)


if __name__ == "__main__":
    main()
