"""lora_jax against the PyTorch + Hugging Face PEFT peer, in one sitting, alternating.

Runs ``../shared/bench/interleave.py`` with, for each T: PEFT eager LoRA, lora_jax LoRA, PEFT
eager full fine-tuning, lora_jax full fine-tuning (each in its own process, A B C D A B C D ...),
then prints our/PEFT ratios and the LoRA/full ratios, and writes the raw lines and a summary
under ``results/``. The peer's environment comes from ``../shared/bench/setup_peer_env.sh``.

    bash ../shared/bench/setup_peer_env.sh .venv-peer
    python benchmarks/peer.py --peer-python .venv-peer/bin/python --seqs 32,64 --rounds 3
    taskset -c 0 python benchmarks/peer.py ...   # both sides on one core: rows of their own
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import RESULTS, described, emit, header

from lora_jax.compare import usable_cores

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench"


def main() -> None:
    p = argparse.ArgumentParser(description=described(__doc__))
    p.add_argument("--peer-python", required=True, help="python of the peer's environment")
    p.add_argument("--bench-dir", default=str(BENCH), help="the peer benchmark's folder")
    p.add_argument("--seqs", default="32,64")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    here = Path(__file__).resolve().parent
    pinned = "" if usable_cores() == os.cpu_count() else f"_{usable_cores()}core"
    for seq in [int(s) for s in args.seqs.split(",")]:
        raw = RESULTS / f"peer_T{seq}{pinned}.jsonl"  # under taskset, a file of its own
        raw.unlink(missing_ok=True)
        cmds = []
        for mode in ("lora", "full"):
            cmds += ["--cmd", f"peft_{mode}={args.peer_python} {args.bench_dir}/peft_step.py "
                              f"--mode {mode} --seq {seq} --steps {args.steps}",
                     "--cmd", f"jax_{mode}={sys.executable} {here}/jax_step.py --mode {mode} "
                              f"--seq {seq} --steps {args.steps}"]
        subprocess.run([sys.executable, f"{args.bench_dir}/interleave.py", "--rounds",
                        str(args.rounds), "--out", str(raw), *cmds], check=True)
        runs: dict[str, list[dict]] = {}
        for line in raw.read_text().splitlines():
            rec = json.loads(line)
            runs.setdefault(rec["label"], []).append(rec)
        med = {k: statistics.median(r["step_ms_median"] for r in v) for k, v in runs.items()}

        def per_round(a, b, runs=runs):
            pairs = zip(runs[a], runs[b], strict=True)
            return statistics.median(x["step_ms_median"] / y["step_ms_median"] for x, y in pairs)

        emit({**header("peer", {"seq": seq, "batch": 32, "rounds": args.rounds,
                                "steps": args.steps}),
              "median_step_ms": med,
              "jax_over_peft_lora": per_round("jax_lora", "peft_lora"),
              "jax_over_peft_full": per_round("jax_full", "peft_full"),
              "lora_over_full_jax": per_round("jax_lora", "jax_full"),
              "lora_over_full_peft": per_round("peft_lora", "peft_full")},
             RESULTS / "peer.jsonl")


if __name__ == "__main__":
    main()
