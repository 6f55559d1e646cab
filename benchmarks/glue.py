"""The GLUE results table: ``lora-jax compare`` on several tasks, methods and seeds.

Each (task, seed) is one ``compare`` run under ``runs/glue/<task>/seed<k>/``; the script then
collects the best-epoch dev metric of every method (median and spread over seeds) with its
trainable-parameter counts into ``results/glue.json`` and ``results/glue.md``, and draws
``results/figures/glue.png``. Each finished (task, seed) report is kept under
``results/glue/``, so the script can be re-run after an interruption, with more tasks or with
more seeds, and only trains what is missing.

    python benchmarks/glue.py --tasks rte,mrpc,stsb,cola,sst2 --seeds 0 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import RESULTS, described, header

from lora_jax.compare import compare
from lora_jax.config import TrainConfig
from lora_jax.data import get_task
from lora_jax.files import atomic_write

TRAIN_LIMIT = {"sst2": 8_000}  # SST-2: a seeded subsample (fits the session); the others whole


def run(tasks, methods, seeds, epochs, out_root: Path, data_dir=None) -> dict:
    """Train what is missing, then collect every (task, seed). A finished run's report is kept
    in ``results/glue/<task>-seed<k>.json`` (small, committed), so later sessions reuse it."""
    cells: dict = {}
    for task in tasks:
        for seed in seeds:
            kept = RESULTS / "glue" / f"{task}-seed{seed}.json"
            if kept.is_file() and json.loads(kept.read_text())["methods"] == methods:
                report = json.loads(kept.read_text())
            else:
                base = TrainConfig(task=task, epochs=epochs, seed=seed,
                                   train_limit=TRAIN_LIMIT.get(task))
                # overwrite: a cell whose report is missing was cut short; redo it whole
                report = compare(base, methods, out_root / task / f"seed{seed}",
                                 data_dir=data_dir, progress=False, overwrite=True)
                kept.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(kept, lambda tmp, r=report: Path(tmp).write_text(
                    json.dumps(r, indent=2) + "\n"))
            for row in report["rows"]:
                cell = cells.setdefault(task, {}).setdefault(row["method"], {"scores": []})
                cell["scores"].append(row["best"])
                cell.update(trainable_params=row["trainable_params"],
                            trainable_params_without_head=row["trainable_params_without_head"],
                            total_params=row["total_params"], metric=report["primary"])
    for task in cells.values():
        for cell in task.values():
            s = cell["scores"]
            cell.update(median=statistics.median(s), min=min(s), max=max(s), n=len(s))
    return cells


def markdown(cells: dict, methods: list[str], epochs: int) -> str:
    tasks = list(cells)
    head = ["method", "trainable params (without head)"]
    head += [f"{get_task(t).folder} ({cells[t][methods[0]]['metric']})" for t in tasks]
    head += ["average"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        first = cells[tasks[0]][m]
        row = [m, f"{first['trainable_params']:,} ({first['trainable_params_without_head']:,})"]
        scores = []
        for t in tasks:
            c = cells[t][m]
            scores.append(100 * c["median"])
            spread = f" ±{50 * (c['max'] - c['min']):.1f}" if c["n"] > 1 else ""
            row.append(f"{100 * c['median']:.1f}{spread}")
        row.append(f"{statistics.mean(scores):.1f}")
        lines.append("| " + " | ".join(row) + " |")
    n = max(c["n"] for t in cells.values() for c in t.values())
    sst2 = (f" SST-2 trains on a seeded {TRAIN_LIMIT['sst2']:,}-example subsample."
            if "sst2" in cells else "")
    return ("\n".join(lines) + f"\n\nBest-epoch dev scores x100 (median of {n} seed(s); ± is "
            f"half the range), {epochs} epochs, all-MiniLM-L6-v2, batch 32, default learning "
            f"rates.{sst2} Parameters: trainable with the task head, and without it in brackets "
            "(the LoRA paper's convention).\n")


def plot(cells: dict, methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = list(cells)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for i, m in enumerate(methods):
        ax.bar(np.arange(len(tasks)) + i * width, [100 * cells[t][m]["median"] for t in tasks],
               width, label=m)
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2,
                  [get_task(t).folder for t in tasks])
    ax.set_ylabel("dev score x100")
    ax.legend(ncol=len(methods), fontsize=8)
    ax.set_title("GLUE dev, all-MiniLM-L6-v2: methods side by side")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def main() -> None:
    p = argparse.ArgumentParser(description=described(__doc__))
    p.add_argument("--tasks", default="rte,mrpc,stsb,cola,sst2")
    p.add_argument("--methods", default="full,lora,bitfit,adapter,head")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--runs", default="runs/glue")
    p.add_argument("--data-dir")
    args = p.parse_args()
    tasks, methods = args.tasks.split(","), args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    cells = run(tasks, methods, seeds, args.epochs, Path(args.runs), args.data_dir)
    out = {**header("glue", {"tasks": tasks, "methods": methods, "seeds": seeds,
                             "epochs": args.epochs}), "results": cells}
    RESULTS.mkdir(exist_ok=True)
    atomic_write(RESULTS / "glue.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(out, indent=2) + "\n"))
    md = markdown(cells, methods, args.epochs)
    atomic_write(RESULTS / "glue.md", lambda tmp: Path(tmp).write_text(md))
    plot(cells, methods, RESULTS / "figures" / "glue.png")
    print(md)


if __name__ == "__main__":
    main()
