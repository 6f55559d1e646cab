"""One speed change, measured: the train step at two commits (or two XLA settings), interleaved.

Checks both commits out into temporary worktrees, runs ``benchmarks/jax_step.py`` of each (its
own ``lora_jax``) alternately in its own process through ``../shared/bench/interleave.py``
(base new base new ...), and writes, per mode and T, the median of the per-round ratios
new / base to ``results/speed_changes.jsonl``. A change counts when the ratio holds across
rounds; this machine's step times drift by 10-30 % from one process to the next. ``--new-env``
runs the new side with environment settings (an XLA option), so one commit against itself
measures a setting.

    python benchmarks/versions.py --base e732fa4 --new HEAD --seqs 32,64 --modes lora,full
    python benchmarks/versions.py --base HEAD --new HEAD --seqs 64 \
        --new-env XLA_FLAGS=--xla_cpu_use_xnnpack=false
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import RESULTS, described, emit, header
from peer import BENCH

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def main() -> None:
    p = argparse.ArgumentParser(description=described(__doc__))
    p.add_argument("--base", required=True, help="the commit before the change")
    p.add_argument("--new", default="HEAD", help="the commit with the change")
    p.add_argument("--seqs", default="32,64")
    p.add_argument("--modes", default="lora,full")
    p.add_argument("--new-env", default="", help="VAR=VALUE settings for the new side")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--bench-dir", default=str(BENCH), help="the peer benchmark's folder")
    p.add_argument("--out", default=str(RESULTS / "speed_changes.jsonl"))
    args = p.parse_args()
    shas = {"base": git("rev-parse", args.base), "new": git("rev-parse", args.new)}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {k: Path(tmp) / k for k in shas}
        for k, sha in shas.items():
            git("worktree", "add", "--detach", str(trees[k]), sha)
        try:
            for mode in args.modes.split(","):
                for seq in [int(s) for s in args.seqs.split(",")]:
                    raw = Path(tmp) / f"{mode}_{seq}.jsonl"
                    cmds = []
                    for k, tree in trees.items():
                        env = args.new_env if k == "new" else ""
                        cmds += ["--cmd", f"{k}={env} PYTHONPATH={tree} {sys.executable} "
                                          f"{tree}/benchmarks/jax_step.py --mode {mode} "
                                          f"--seq {seq} --steps {args.steps}"]
                    subprocess.run([sys.executable, f"{args.bench_dir}/interleave.py",
                                    "--rounds", str(args.rounds), "--out", str(raw), *cmds],
                                   check=True)
                    runs = {"base": [], "new": []}
                    for line in raw.read_text().splitlines():
                        rec = json.loads(line)
                        runs[rec["label"]].append(rec["step_ms_median"])
                    ratios = [n / b for n, b in zip(runs["new"], runs["base"], strict=True)]
                    emit({**header("versions", {"mode": mode, "seq": seq, "batch": 32,
                                                "rounds": args.rounds, "steps": args.steps}),
                          "base": shas["base"][:7], "new": shas["new"][:7],
                          "new_env": args.new_env,
                          "subject": git("log", "-1", "--format=%s", shas["new"])
                          if shas["new"] != shas["base"] else "",
                          "step_ms": runs, "new_over_base": statistics.median(ratios),
                          "round_ratios": [round(r, 3) for r in ratios]}, args.out)
        finally:
            for tree in trees.values():
                git("worktree", "remove", "--force", str(tree))


if __name__ == "__main__":
    main()
