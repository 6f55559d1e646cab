"""LoRA against full fine-tuning, fairly: learning rates tuned per task and method, epochs to a
plateau, several seeds, and the paired difference with its 95 % interval.

A **cell** is one ``fit`` of one (task, method, learning rate, seed), dev evaluated after every
epoch. Each finished cell is kept as ``results/fair/<task>/<method>-lr<lr>-seed<seed>.json``:
its learning curve (dev scores, wall and CPU seconds at each epoch), best and final epoch, the
cost (trainable parameters, optimizer state, step memory, examples/s), and the commit it ran
at. The protocol, per task and method:

1. **grid**: seed 0 at every learning rate of the method's grid (``GRID``), and, when the best
   of them is at an end of the grid, at one rate beyond that end (``EXTEND``): a best rate at
   the edge of the range tried says the optimum may lie outside it;
2. **choice**: the rate whose seed-0 run has the best best-epoch dev score;
3. **seeds**: seeds 1, 2, ... at the chosen rate.

``run`` trains the cells that are missing (an interrupted cell resumes from its run directory);
``report`` writes ``results/fair.json``, ``results/fair.md`` and the figures from whatever
cells exist, marking what is still missing. Run it from a clone at a fixed commit::

    python benchmarks/fair.py run --tasks rte,mrpc,stsb,cola,sst2 --seeds 0,1,2
    python benchmarks/fair.py report
    python benchmarks/fair.py run --tasks rte,mrpc --methods lora-all   # a capacity lever
    python benchmarks/fair.py run --tasks rte,sst2 --methods dora,loraplus,pissa,lora-r64,rslora-r64
    python benchmarks/fair.py report --tasks rte,sst2 --out results/after_lora \\
        --methods lora,full,dora,loraplus,pissa,lora-r64,rslora-r64,qlora  # notebooks 09, 10
    python benchmarks/fair.py report --all   # every report of REPORTS, each in its folder

A cell's own timings are as it ran: cells run two at a time on 2 cores, and a session pauses
them to time benchmarks, so its examples/s say little about the method. ``costs`` measures the
speed columns of the tables on an idle machine instead: each (task, variant)'s jitted step over
the first batches of its first epoch (the task's mix of lengths), the variants interleaved in
rounds, one JSON line each in ``results/fair_costs.jsonl``::

    python benchmarks/fair.py costs --tasks rte,mrpc,stsb --methods lora,full,dora,pissa

``VARIANTS`` names what a cell trains; every variant is compared with full fine-tuning seed by
seed, and the ``lora-*`` levers with plain LoRA too. ``note --compare runs/demo/compare.json``
sets a one-seed ``lora-jax compare`` beside the spread measured here (``make demo`` ends with it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import time
from pathlib import Path

from common import RESULTS, described, placed_epoch, steps

from lora_jax.compare import cpu_label, latest, machine_info, measure, read_records
from lora_jax.config import TrainConfig
from lora_jax.data import get_task
from lora_jax.files import atomic_write
from lora_jax.models import BLOCK_TARGETS
from lora_jax.pretrained import load_pretrained
from lora_jax.run import RUN_FILES, fit

# What a cell trains, by the name the tables use: the method and what it changes in the
# config. "lora" and "full" are the comparison; "lora-all" and "lora-r16" are the two capacity
# levers (every dense layer of the blocks at r = 8; query,value at r = 16 with alpha / r kept
# at 2); "lora-long" is the optimisation lever (twice the task's epochs, for a curve still
# rising at the protocol's last epoch); "adapter" and "bitfit" are the other baselines.
# LoRA's descendants train the same rank and layers as "lora" (r = 8, alpha = 16 on
# query,value): DoRA, LoRA+ (B at 16 times the rate) and PiSSA; rsLoRA is measured where its
# scale matters, at r = 64 beside LoRA at r = 64 (the same alpha = 16: a scale of
# 16/sqrt(64) = 2 against 16/64 = 0.25).
VARIANTS = {
    "lora": {"method": "lora"},
    "full": {"method": "full"},
    "lora-all": {"method": "lora", "targets": BLOCK_TARGETS},
    "lora-r16": {"method": "lora", "rank": 16, "alpha": 32.0},
    "lora-long": {"method": "lora", "epochs_times": 2},  # the schedule spans the longer run
    "adapter": {"method": "adapter"},
    "bitfit": {"method": "bitfit"},
    "dora": {"method": "dora"},
    "loraplus": {"method": "lora", "loraplus_ratio": 16.0},
    "pissa": {"method": "lora", "lora_init": "pissa"},
    "lora-r64": {"method": "lora", "rank": 64},
    "rslora-r64": {"method": "lora", "rank": 64, "rslora": True},
    "qlora": {"method": "lora", "quantize": "nf4"},  # LoRA on the NF4 base (QLoRA)
}
# The descendant each is read against, besides full fine-tuning.
AGAINST = {"dora": "lora", "loraplus": "lora", "pissa": "lora", "lora-r64": "lora",
           "rslora-r64": "lora-r64", "qlora": "lora"}
DESCENDANTS = tuple(AGAINST)
# Learning-rate grids: a decade each around the usual values (the paper's LoRA rates on
# RoBERTa-base are 4e-4 to 5e-4; full fine-tuning of BERT-sized models is usually 2e-5 to 5e-5;
# BitFit's paper tunes 1e-4 to 1e-3, adapters are trained near 1e-4 to 1e-3).
GRID = {"lora": (2e-4, 6e-4, 2e-3), "full": (1e-5, 3e-5, 1e-4),
        "lora-all": (2e-4, 6e-4, 2e-3), "lora-r16": (2e-4, 6e-4, 2e-3),
        "lora-long": (2e-4, 6e-4, 2e-3),
        "adapter": (1e-4, 3e-4, 1e-3), "bitfit": (3e-4, 1e-3, 3e-3),
        **{d: (2e-4, 6e-4, 2e-3) for d in DESCENDANTS}}  # LoRA's grid: each is tuned as it is
EXTEND = {"lora": (6e-5, 6e-3), "full": (3e-6, 3e-4), "lora-all": (6e-5, 6e-3),
          "lora-r16": (6e-5, 6e-3), "lora-long": (6e-5, 6e-3), "adapter": (3e-5, 3e-3),
          "bitfit": (1e-4, 1e-2), **{d: (6e-5, 6e-3) for d in DESCENDANTS}}
# (one step below / above the grid)
EPOCHS = {"rte": 10, "mrpc": 10, "stsb": 10, "cola": 10, "sst2": 5}
TRAIN_LIMIT = {"sst2": 8_000}  # a seeded subsample, as in benchmarks/glue.py
# Every report the study renders, by its folder under results/ ("." is the main comparison),
# with the tasks and methods it covers: `report --all` renders them all. Each lever has its own
# report, on the tasks it was planned for: r = 16 first on RTE and MRPC, then where LoRA's gap
# is real (STS-B, SST-2); every block layer (twice LoRA's step) on RTE; twice the epochs on
# SST-2, the one task trained for 5. The descendants are measured on RTE and SST-2, whose
# three-seed intervals are the narrowest per hour of training.
REPORTS = {
    ".": (tuple(EPOCHS), ("lora", "full")),
    "after_lora": (("rte", "sst2"), ("lora", "full", *DESCENDANTS)),  # notebooks 09, 10
    "rank": (("rte", "mrpc", "stsb", "sst2"), ("lora", "full", "lora-r16")),
    "layers": (("rte",), ("lora", "full", "lora-all")),
    "epochs": (("sst2",), ("lora", "full", "lora-long")),
}
LEVERS = ("rank", "layers", "epochs")  # the levers' reports: capacity, then optimisation
COLORS = {"lora": "tab:blue", "full": "tab:orange", "lora-all": "tab:green",
          "lora-r16": "tab:purple", "lora-long": "darkgreen", "adapter": "tab:brown",
          "bitfit": "tab:gray", "dora": "tab:red", "loraplus": "tab:olive", "pissa": "tab:cyan",
          "lora-r64": "tab:pink", "rslora-r64": "black", "qlora": "gold"}
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228}  # Student's t, 97.5 % quantile, by degrees of freedom


def cell_path(root: Path, task: str, method: str, lr: float, seed: int) -> Path:
    return root / task / f"{method}-lr{lr:g}-seed{seed}.json"


def commit() -> str:
    """The commit the code runs at (``+dirty`` when the tree has changes): kept in each cell.
    A copy without ``.git`` (the device machine's) is told it by ``LORA_JAX_COMMIT``."""
    if os.environ.get("LORA_JAX_COMMIT"):
        return os.environ["LORA_JAX_COMMIT"]
    here = Path(__file__).resolve().parent
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True).stdout.strip()
    return sha + ("+dirty" if dirty else "")


def run_cell(cfg: TrainConfig, run_dir: Path, out: Path, *, data_dir: str | None,
             variant: str | None = None) -> dict:
    """Train one cell (resuming its run directory if a previous attempt was cut short) and
    keep its record at ``out``."""
    task = get_task(cfg.task)
    clock = run_dir.with_name(run_dir.name + ".clock.json")  # seconds at each epoch's end,
    # beside the run directory (fit writes nothing else into it), kept across a resume
    times = json.loads(clock.read_text()) if clock.is_file() else []
    resume = (run_dir / "state.safetensors").is_file()
    offset = (times[-1]["wall_s"], times[-1]["cpu_s"]) if resume and times else (0.0, 0.0)
    t0, c0 = time.perf_counter(), time.process_time()

    def on_epoch(record: dict) -> None:
        times.append({"epoch": record["epoch"], "wall_s": offset[0] + time.perf_counter() - t0,
                      "cpu_s": offset[1] + time.process_time() - c0})
        text = json.dumps(times)
        atomic_write(clock, lambda tmp: Path(tmp).write_text(text))

    if not resume:
        times = []
        for name in RUN_FILES:  # a cut-short attempt without a state: start it again
            (run_dir / name).unlink(missing_ok=True)
    result = fit(cfg, run_dir, data_dir=data_dir, resume=resume, progress=False,
                 on_epoch=on_epoch)
    at = {t["epoch"]: t for t in times}
    curve = [{"epoch": r["epoch"], "step": r["step"], "score": r["eval"][task.primary],
              "eval": r["eval"], **{k: at.get(r["epoch"], {}).get(k) for k in ("wall_s", "cpu_s")}}
             for r in result.epochs]
    best = max(curve, key=lambda r: r["score"])
    row = measure(result, cfg, task)
    record = {
        "task": task.name, "method": cfg.method, "variant": variant or cfg.method,
        "lr": cfg.lr, "seed": cfg.seed,
        "primary": task.primary, "curve": curve, "best": best, "final": curve[-1],
        "cost": {k: row[k] for k in ("trainable_params", "trainable_params_without_head",
                                     "optimizer_state_bytes", "step_memory_bytes",
                                     "median_step_ms", "step_length", "examples_per_s")},
        "train_examples": result.info["train_examples"],
        "dev_examples": result.info["dev_examples"], "config": cfg.to_json(),
        "resumed": resume, "commit": commit(), "machine": machine_info(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))
    return record


def load_cells(root: Path) -> dict[tuple, dict]:
    """Every kept cell: (task, method, lr, seed) -> record."""
    cells = {}
    for p in sorted(root.glob("*/*.json")):
        r = json.loads(p.read_text())
        cells[(r["task"], r.get("variant", r["method"]), r["lr"], r["seed"])] = r
    return cells


def next_rate(cells: dict, task: str, method: str, grid: tuple[float, ...],
              extend: tuple[float, float] | None) -> float | None:
    """The seed-0 rate still to run for (task, method), or None when the search is done: each
    grid rate first; then the step beyond the end of the grid where the best of them lies."""
    missing = [lr for lr in grid if (task, method, lr, 0) not in cells]
    if missing:
        return missing[0]
    best = max(grid, key=lambda lr: cells[(task, method, lr, 0)]["best"]["score"])
    if extend is not None:
        beyond = {grid[0]: extend[0], grid[-1]: extend[1]}.get(best)
        if beyond is not None and (task, method, beyond, 0) not in cells:
            return beyond
    return None


def tried(cells: dict, task: str, method: str, grid: tuple[float, ...],
          extend: tuple[float, float] | None) -> list[float]:
    """The seed-0 rates run so far for (task, method), in increasing order."""
    rates = set(grid) | set(extend or ())
    return sorted(lr for lr in rates if (task, method, lr, 0) in cells)


def chosen_lr(cells: dict, task: str, method: str, grid: tuple[float, ...],
              extend: tuple[float, float] | None = None) -> float | None:
    """The tried rate with the best seed-0 best-epoch score; None until the search is done."""
    if next_rate(cells, task, method, grid, extend) is not None:
        return None
    return max(tried(cells, task, method, grid, extend),
               key=lambda lr: cells[(task, method, lr, 0)]["best"]["score"])


def plan(cells: dict, tasks, methods, seeds, grid: dict, extend: dict | None = None
         ) -> list[tuple]:
    """The cells due now, in order: each task's learning-rate searches first, then its seeds
    at the chosen rates, seed by seed across methods so that the paired differences fill in
    as early as possible (a rate beyond the grid becomes due once the grid is complete)."""
    extend = EXTEND if extend is None else extend
    todo = []
    for task in tasks:
        for method in methods:
            lr = next_rate(cells, task, method, grid[method], extend.get(method))
            todo += [(task, method, lr, 0)] if lr is not None else []
        chosen = {m: chosen_lr(cells, task, m, grid[m], extend.get(m)) for m in methods}
        todo += [(task, m, chosen[m], s) for s in seeds if s != 0 for m in methods
                 if chosen[m] is not None and (task, m, chosen[m], s) not in cells]
    return todo


def base_config(task: str, variant: str, lr: float, seed: int, epochs: dict, **extra
                ) -> TrainConfig:
    """The cell's config: the protocol's defaults, then what the variant changes (``epochs_times``
    multiplies the task's epochs)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    settings = {"rank": 8, "alpha": 16.0, "targets": ("query", "value"), **VARIANTS[variant],
                **extra}
    times = settings.pop("epochs_times", 1)
    return TrainConfig(task=task, learning_rate=lr, seed=seed, epochs=epochs[task] * times,
                       train_limit=TRAIN_LIMIT.get(task), **settings)


def run(tasks, methods, seeds, *, root: Path, runs: Path, data_dir=None, grid=GRID,
        extend=EXTEND, epochs=EPOCHS, limit: int | None = None, **extra) -> list[dict]:
    """Train up to ``limit`` missing cells (re-planning after each, since a finished grid makes
    its seeds due); returns their records."""
    done = []
    while limit is None or len(done) < limit:
        cells = load_cells(root)
        todo = plan(cells, tasks, methods, seeds, grid, extend)
        if not todo:
            break
        task, method, lr, seed = todo[0]
        cfg = base_config(task, method, lr, seed, epochs, **extra)
        run_dir = runs / task / f"{method}-lr{lr:g}-seed{seed}"
        print(f"cell {task} {method} lr={lr:g} seed={seed}", flush=True)
        record = run_cell(cfg, run_dir, cell_path(root, task, method, lr, seed),
                          data_dir=data_dir, variant=method)
        print(f"  best {record['best']['score']:.4f} at epoch {record['best']['epoch']}, "
              f"final {record['final']['score']:.4f}, {record['curve'][-1]['wall_s']:.0f} s",
              flush=True)
        done.append(record)
    return done


# --- the costs, measured idle --------------------------------------------------------------

COSTS = RESULTS / "fair_costs.jsonl"


def cost_configs(cells: dict, tasks, methods) -> dict[tuple[str, str], TrainConfig]:
    """One kept cell's config per (task, variant), in the order of ``tasks`` and ``methods``:
    a step's cost does not depend on the learning rate or the seed (seed 0's cell, the lowest
    rate, when several)."""
    out = {}
    for task, variant in itertools.product(tasks, methods):
        keys = [k for k in cells if k[:2] == (task, variant)]
        if keys:
            first = min(keys, key=lambda k: (k[3], k[2]))
            out[(task, variant)] = TrainConfig.from_json(cells[first]["config"])
    return out


def time_costs(cfgs: dict, *, data_dir=None, batches: int = 24, rounds: int = 3) -> list[dict]:
    """Examples per second of each config's jitted train step over the first ``batches``
    batches of its first epoch (the task's own mix of padded lengths), already placed, the
    configs interleaved in rounds (A B C A B C); each is compiled by a pass over its batches
    first. Returns one record per config, the median round's speed."""
    pres, setups = {}, {}
    for key, cfg in cfgs.items():
        task = get_task(cfg.task)
        which = (cfg.model, task.num_labels, cfg.quantize)
        if which not in pres:
            pres[which] = load_pretrained(cfg.model, num_labels=task.num_labels,
                                          quantize=cfg.quantize)
        run, host, placed, state = placed_epoch(cfg, pres[which], data_dir, batches)
        setups[key] = {"run": run, "placed": placed, "state": state, "seconds": [],
                       "examples": sum(float(b["weight"].sum()) for b in host),
                       "length": sum(b["input_ids"].shape[1] for b in host) / len(host)}
    for _ in range(rounds):
        for su in setups.values():
            t0 = time.perf_counter()
            su["state"] = steps(su["run"], su["state"], su["placed"])
            su["seconds"].append(time.perf_counter() - t0)
    machine, at, sha = machine_info(), time.strftime("%Y-%m-%dT%H:%M:%S"), commit()
    records = []
    for (task, variant), su in setups.items():
        seconds = statistics.median(su["seconds"])
        records.append({
            "benchmark": "fair_costs", "task": task, "variant": variant,
            "batches": len(su["placed"]), "batch_size": cfgs[(task, variant)].batch_size,
            "examples": su["examples"], "mean_padded_length": round(su["length"], 1),
            "round_seconds": su["seconds"], "examples_per_s": su["examples"] / seconds,
            "step_ms": 1000 * seconds / len(su["placed"]), "rounds": rounds,
            "commit": sha, "machine": machine, "time": at})
    return records


def costs(tasks, methods, *, root: Path, out: Path = COSTS, data_dir=None, batches: int = 24,
          rounds: int = 3) -> list[dict]:
    """Measure and keep (appended to ``out``) the idle cost of every (task, variant) that has
    a kept cell."""
    records = time_costs(cost_configs(load_cells(root), tasks, methods), data_dir=data_dir,
                         batches=batches, rounds=rounds)
    old = out.read_text() if out.is_file() else ""
    text = old + "".join(json.dumps(r) + "\n" for r in records)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    return records


def load_costs(path: Path = COSTS) -> dict[tuple[str, str], dict]:
    """The latest idle cost per (task, variant)."""
    rows = sorted(read_records(path, "fair_costs", missing_ok=True), key=lambda r: r["time"])
    return latest(rows, lambda r: (r["task"], r["variant"]))


# --- the report ---------------------------------------------------------------------------------


def mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def paired(diffs: list[float]) -> dict:
    """Mean of the per-seed differences and its 95 % t-interval (n >= 2)."""
    n = len(diffs)
    m, sd = mean_sd(diffs)
    if n < 2:
        return {"n": n, "mean": m, "sd": sd, "low": float("nan"), "high": float("nan"),
                "noise": None}
    half = T975[n - 1] * sd / math.sqrt(n)
    return {"n": n, "mean": m, "sd": sd, "low": m - half, "high": m + half,
            "noise": m - half <= 0 <= m + half}


def contrasts(methods) -> list[tuple[str, str]]:
    """The paired differences reported: every variant against full fine-tuning, each capacity
    lever (``lora-*``) against plain LoRA as well, and each descendant against what it
    changes (``AGAINST``)."""
    pairs = [(m, "full") for m in methods if m != "full" and "full" in methods]
    pairs += [(m, "lora") for m in methods if m.startswith("lora-") and "lora" in methods]
    return pairs + [(m, AGAINST[m]) for m in methods if m in AGAINST and AGAINST[m] in methods
                    and (m, AGAINST[m]) not in pairs]


def difference(a: dict, b: dict) -> dict | None:
    """``a`` minus ``b``, seed by seed over the seeds both have, with its interval."""
    if not (a.get("by_seed") and b.get("by_seed")):
        return None
    common = sorted(set(a["by_seed"]) & set(b["by_seed"]))
    return paired([a["by_seed"][s] - b["by_seed"][s] for s in common]) if common else None


IDLE_FIELDS = ("examples_per_s", "step_ms", "batches", "mean_padded_length", "machine", "time")


def summarize(cells: dict, tasks, methods, grid=GRID, extend=EXTEND,
              idle: dict | None = None) -> dict:
    """Per task: the grid with its choice, per method the seeds at the chosen rate (best and
    final epoch, mean and sd, cost), and LoRA minus full per seed with its interval. ``idle``
    (``load_costs``) gives each method's speed measured idle, and so the seconds its best epoch
    takes at that speed."""
    idle = {} if idle is None else idle
    out = {}
    for task in tasks:
        entry = {"methods": {}}
        for method in methods:
            ext = extend.get(method)
            grid_scores = {f"{lr:g}": cells[(task, method, lr, 0)]["best"]["score"]
                           for lr in tried(cells, task, method, grid[method], ext)}
            lr = chosen_lr(cells, task, method, grid[method], ext)
            runs = ({s: r for (t, m, x, s), r in cells.items() if (t, m, x) == (task, method, lr)}
                    if lr is not None else {})
            # the step beyond the grid won too: the protocol takes one step only, so the
            # optimum may lie further out, and the table says so
            edge = lr is not None and lr in (ext or ())
            m = {"grid": grid_scores, "lr": lr, "seeds": sorted(runs), "edge": edge,
                 "rate": None if lr is None else f"{lr:g}" + (" (edge)" if edge else "")}
            if runs:
                best = [runs[s]["best"]["score"] for s in sorted(runs)]
                final = [runs[s]["final"]["score"] for s in sorted(runs)]
                m.update(best=mean_sd(best), final=mean_sd(final),
                         best_epoch=[runs[s]["best"]["epoch"] for s in sorted(runs)],
                         cost=runs[min(runs)]["cost"], by_seed={s: runs[s]["best"]["score"]
                                                                for s in sorted(runs)})
                if (task, method) in idle:
                    i = idle[(task, method)]
                    steps_to_best = statistics.median(runs[s]["best"]["step"] for s in runs)
                    m["idle"] = {**{k: i[k] for k in IDLE_FIELDS},
                                 "s_to_best": steps_to_best * i["step_ms"] / 1e3}
            entry["methods"][method] = m
        ms = entry["methods"]
        entry["differences"] = {f"{a} - {b}": d for a, b in contrasts(methods)
                                if (d := difference(ms[a], ms[b])) is not None}
        if "lora - full" in entry["differences"]:
            entry["lora_minus_full"] = entry["differences"]["lora - full"]
        out[task] = entry
    return out


def edge_note(summary: dict) -> str:
    """The footnote every table of the study prints under an "(edge)" rate (fair.md, the
    README and deck, notebooks 06 and 09 read it from fair.json), or "" when there is none."""
    edges = [f"{get_task(task).folder} {NAMES.get(method, method)}"
             for task, entry in summary.items()
             for method, m in entry["methods"].items() if m.get("edge")]
    if not edges:
        return ""
    return ("(edge): the chosen rate is the one step beyond the grid, and it beat the grid; the "
            "protocol takes one such step only, so the best rate may lie further out "
            f"({', '.join(edges)}).")


def _mean_sd(pair) -> str:
    mean, sd = pair
    return f"{100 * mean:.1f}" + ("" if math.isnan(sd) else f" ± {100 * sd:.1f}")


SAME_STEP = ("lora", "loraplus", "pissa")  # one computation: LoRA+ changes only B's learning
# rate, PiSSA only the starting values (and the frozen residual): same shapes, same step


def same_step_noise(summary: dict) -> str:
    """The spread of the idle speeds of variants that run the same step, per task: how far
    apart two measurements of one step land, so smaller differences read as noise."""
    spreads = {}
    for task, entry in summary.items():
        speeds = [m["idle"]["examples_per_s"] for v, m in entry["methods"].items()
                  if v in SAME_STEP and "idle" in m]
        if len(speeds) > 1:
            spreads[get_task(task).folder] = max(speeds) / min(speeds) - 1
    if not spreads:
        return ""
    names = ", ".join(NAMES[v] for v in SAME_STEP)
    return (f" {names} run the same step; their speeds differ by up to "
            f"{100 * max(spreads.values()):.0f} % ({', '.join(spreads)}), the noise of this "
            "measurement.")


def markdown(summary: dict, methods) -> str:
    lines = ["| task | method | grid: seed-0 best score by lr | chosen lr | seeds "
             "| best (mean ± sd) | final (mean ± sd) | best epochs | trainable (w/o head) "
             "| optimizer state | step memory | examples/s (idle) | s to best epoch (idle) |",
             "|" + "---|" * 13]
    timed = []
    for task, entry in summary.items():
        folder = get_task(task).folder  # the task as the README and the answer name it
        for method in methods:
            m = entry["methods"].get(method, {})
            grid = ", ".join(f"{k}: {100 * v:.1f}" for k, v in m.get("grid", {}).items()) or "-"
            if "best" not in m:
                lines.append(f"| {folder} | {method} | {grid} | {m.get('lr') or 'grid incomplete'} "
                             "| - | - | - | - | - | - | - | - | - |")
                continue
            c, i = m["cost"], m.get("idle")
            speed = (f"{i['examples_per_s']:.0f} | {i['s_to_best']:.0f}" if i
                     else "not measured | -")
            timed += [i] if i else []
            lines.append(
                f"| {folder} | {method} | {grid} | {m['rate']} "
                f"| {len(m['seeds'])} | "
                f"{_mean_sd(m['best'])} | {_mean_sd(m['final'])} | "
                f"{', '.join(map(str, m['best_epoch']))} | "
                f"{c['trainable_params']:,} ({c['trainable_params_without_head']:,}) | "
                f"{c['optimizer_state_bytes'] / 1e6:.1f} MB | "
                f"{c['step_memory_bytes'] / 1e9:.2f} GB | {speed} |")
    if timed:
        where = "; ".join(sorted({f"{cpu_label(i['machine'])}, {i['time'][:10]}"
                                  for i in timed}))
        first = "/".join(sorted({str(i["batches"]) for i in timed}))
        speed = (f"the method's train step over the first {first} batches of its first epoch "
                 "(the task's mix of lengths), measured idle with the methods interleaved "
                 f"(`python benchmarks/fair.py costs`; {where}); seconds to the best epoch are "
                 "its steps (median over seeds) at that speed")
    else:
        speed = "not measured yet (`python benchmarks/fair.py costs`)"
    lines += ["", "Step memory: XLA's accounting of the compiled train step at the task's longest "
              f"bucket. Speed: {speed}. The cells' own timings are not used: they ran two at a "
              "time on 2 cores, paused whenever a benchmark ran." + same_step_noise(summary)]
    if note := edge_note(summary):
        lines += ["", note]
    lines += ["", "| task | difference | per seed (mean) | 95 % interval | within seed noise? |",
              "|---|---|---|---|---|"]
    for task, entry in summary.items():
        folder = get_task(task).folder
        for name in (f"{a} - {b}" for a, b in contrasts(methods)):
            d = entry.get("differences", {}).get(name)
            label = name.replace(" - ", " − ")
            if d is None:
                lines.append(f"| {folder} | {label} | - | - | not yet measured |")
            elif d["n"] < 2:
                lines.append(f"| {folder} | {label} | {100 * d['mean']:+.1f} (1 seed) | - "
                             "| needs 2+ seeds |")
            else:
                lines.append(f"| {folder} | {label} | {100 * d['mean']:+.1f} ({d['n']} seeds) | "
                             f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] | "
                             f"{'yes' if d['noise'] else 'no'} |")
    answer = verdict(summary) if "lora" in methods and "full" in methods else None
    if answer is not None:
        lines += ["", ("**The answer**: " if answer["complete"] else "**The answer so far**: ")
                  + answer["overall"], ""] + [f"- {line}" for line in answer["tasks"].values()]
    return "\n".join(lines) + (
        "\n\nDev scores x100 (the task's main metric), all-MiniLM-L6-v2, batch 32, LoRA r = 8 "
        "on query,value (alpha 16); the rate is chosen on seed 0 by best-epoch score. The "
        "learning-curve figures plot the score against each cell's own CPU seconds (all "
        "threads; a paused cell counts none), median over seeds.\n")


def plot(cells: dict, summary: dict, path: Path) -> None:
    """Learning curves per task, dev score against epoch (top) and against CPU seconds
    (bottom): thin lines for every seed-0 run of the grid, and for each method's chosen rate
    the mean over seeds with their range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = [t for t in summary if any(k[0] == t for k in cells)]
    if not tasks:
        return
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 6), squeeze=False)
    for j, task in enumerate(tasks):
        for (t, method, lr, seed), r in sorted(cells.items()):
            if t != task or seed != 0:
                continue
            x = [c["epoch"] for c in r["curve"]]
            y = [100 * c["score"] for c in r["curve"]]
            cpu = [c["cpu_s"] for c in r["curve"]]
            for ax, xs in ((axes[0, j], x), (axes[1, j], cpu)):
                ax.plot(xs, y, lw=0.8, alpha=0.5, color=COLORS.get(method),
                        label=f"{method} lr {lr:g} (seed 0)" if ax is axes[0, j] else None)
        for method, m in summary[task]["methods"].items():
            if "best" not in m or len(m["seeds"]) < 2:
                continue
            runs = [cells[(task, method, m["lr"], s)] for s in m["seeds"]]
            n = min(len(r["curve"]) for r in runs)
            score = np.array([[c["score"] for c in r["curve"][:n]] for r in runs]) * 100
            cpu = np.median([[c["cpu_s"] for c in r["curve"][:n]] for r in runs], 0)
            for ax, xs in ((axes[0, j], np.arange(1, n + 1)), (axes[1, j], cpu)):
                ax.plot(xs, score.mean(0), lw=2, color=COLORS.get(method),
                        label=(f"{method} lr {m['lr']:g}, {len(runs)} seeds"
                               if ax is axes[0, j] else None))
                ax.fill_between(xs, score.min(0), score.max(0), alpha=0.2,
                                color=COLORS.get(method))
        axes[0, j].set_title(task)
        axes[0, j].set_xlabel("epoch")
        axes[1, j].set_xlabel("CPU seconds (all threads)")
        axes[0, j].legend(fontsize=7)
    axes[0, 0].set_ylabel("dev score x100")
    axes[1, 0].set_ylabel("dev score x100")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


NAMES = {"lora": "LoRA", "full": "full fine-tuning", "lora-all": "LoRA on every block layer",
         "lora-r16": "LoRA at r = 16", "lora-long": "LoRA for twice the epochs",
         "adapter": "adapters", "bitfit": "BitFit",
         "dora": "DoRA", "loraplus": "LoRA+", "pissa": "PiSSA", "lora-r64": "LoRA at r = 64",
         "rslora-r64": "rsLoRA at r = 64", "qlora": "LoRA on an NF4 base (QLoRA)"}
SEEDS_NEEDED = 3


def verdict(summary: dict, a: str = "lora", b: str = "full") -> dict:
    """The answer in words, per task and overall, from the paired differences ``a - b``: a
    task is settled once it has ``SEEDS_NEEDED`` seeds of both; until then it says so."""
    per_task, settled = {}, {}
    for task, entry in summary.items():
        d = entry.get("differences", {}).get(f"{a} - {b}")
        folder = get_task(task).folder
        if d is None:
            per_task[task] = f"{folder}: not measured yet"
            continue
        gap = f"{NAMES[a]} − {NAMES[b]} = {100 * d['mean']:+.1f} points"
        if d["n"] < 2:
            per_task[task] = f"{folder}: {gap} from 1 seed (no interval yet)"
            continue
        interval = f"95 % interval [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
        if d["noise"]:
            word = "within seed noise"
        else:
            word = f"{NAMES[a]} {'below' if d['mean'] < 0 else 'above'} {NAMES[b]}"
        seeds = (f"{d['n']} seeds" if d["n"] >= SEEDS_NEEDED
                 else f"{d['n']} of {SEEDS_NEEDED} seeds so far")
        per_task[task] = f"{folder}: {word}: {gap}, {interval}, {seeds}"
        if d["n"] >= SEEDS_NEEDED:
            settled[task] = d
    noise, below, above = [], [], []
    for task, d in settled.items():
        (noise if d["noise"] else below if d["mean"] < 0 else above).append(task)
    missing = [t for t in summary if t not in settled]
    if not settled:
        overall = (f"Not answered yet: no task has {SEEDS_NEEDED} seeds of both "
                   f"{NAMES[a]} and {NAMES[b]}.")
    else:
        mean = statistics.mean(d["mean"] for d in settled.values())
        names = lambda ts: ", ".join(get_task(t).folder for t in ts) or "none"  # noqa: E731
        overall = (f"On {len(settled)} of {len(summary)} tasks measured with {SEEDS_NEEDED}+ "
                   f"seeds, {NAMES[a]} − {NAMES[b]} averages {100 * mean:+.1f} points; within "
                   f"seed noise on {len(noise)} ({names(noise)}), below on {len(below)} "
                   f"({names(below)}), above on {len(above)} ({names(above)}).")
        if missing:
            overall += f" Still to measure: {names(missing)}."
    return {"contrast": f"{a} - {b}", "label": f"{NAMES[a]} − {NAMES[b]}", "overall": overall,
            "tasks": per_task, "complete": not missing,
            # the settled tasks sorted by the same rule as `overall`, for readers that word it
            "noise": noise, "below": below, "above": above, "missing": missing}


def plot_compare(summary: dict, methods, path: Path) -> None:
    """The final comparison: per task, each method's best-epoch dev score at its chosen rate
    (mean over seeds, bars the standard deviation) on the left; on the right each paired
    difference against full fine-tuning with its 95 % interval (a bar that crosses zero is
    within seed noise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = [t for t, e in summary.items() if any("best" in m for m in e["methods"].values())]
    if not tasks:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    shown = [m for m in methods if any("best" in summary[t]["methods"].get(m, {})
                                       for t in tasks)]
    width, x = 0.8 / max(len(shown), 1), np.arange(len(tasks))
    for i, m in enumerate(shown):
        stats = [summary[t]["methods"].get(m, {}).get("best") for t in tasks]
        mean = [100 * s[0] if s else np.nan for s in stats]
        sd = [100 * s[1] if s and not math.isnan(s[1]) else 0.0 for s in stats]
        n = [len(summary[t]["methods"].get(m, {}).get("seeds", ())) for t in tasks]
        bars = left.bar(x + (i - (len(shown) - 1) / 2) * width, mean, width, yerr=sd,
                        capsize=3, label=NAMES.get(m, m), color=COLORS.get(m))
        for bar, k in zip(bars, n, strict=True):
            if k:
                left.annotate(f"{k}", (bar.get_x() + bar.get_width() / 2, 0),
                              ha="center", va="bottom", fontsize=7, color="white")
    left.set_xticks(x, [get_task(t).folder for t in tasks])
    left.set_ylabel("best-epoch dev score x100")
    left.set_title("score at the tuned rate (mean ± sd; n seeds at the foot)")
    left.legend(fontsize=7)
    names = [f"{a} - {b}" for a, b in contrasts(methods) if b == "full"]
    for i, name in enumerate(names):
        ds = [summary[t].get("differences", {}).get(name) for t in tasks]
        xs = x + (i - (len(names) - 1) / 2) * (0.8 / max(len(names), 1))
        for xi, d in zip(xs, ds, strict=True):
            if d is None:
                continue
            lo, hi = (d["low"], d["high"]) if d["n"] >= 2 else (d["mean"], d["mean"])
            right.errorbar([xi], [100 * d["mean"]],
                           yerr=[[100 * (d["mean"] - lo)], [100 * (hi - d["mean"])]],
                           fmt="o", capsize=4, color=COLORS.get(name.split(" - ")[0]))
        right.plot([], [], "o", color=COLORS.get(name.split(" - ")[0]),
                   label=f"{NAMES.get(name.split(' - ')[0])} − full")
    right.axhline(0, color="black", lw=0.8)
    right.set_xticks(x, [get_task(t).folder for t in tasks])
    right.set_ylabel("paired difference, points")
    right.set_title("minus full fine-tuning, seed by seed (95 % interval)")
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def _no_nan(x):
    """``x`` with NaN (an sd of one seed, an interval of one pair) as None."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_no_nan(v) for v in x]
    return x


def report_cells(root: Path, tasks, methods) -> dict:
    """The kept cells of ``tasks`` x ``methods``: a report's commits, CPUs and curves are its
    own cells', not other variants'."""
    return {k: c for k, c in load_cells(root).items() if k[0] in tasks and k[1] in methods}


def report(tasks, methods, *, root: Path, out: Path, grid=GRID, extend=EXTEND,
           costs_file: Path = COSTS) -> dict:
    cells = report_cells(root, tasks, methods)
    summary = summarize(cells, tasks, methods, grid, extend, load_costs(costs_file))
    record = {"protocol": {"grid": {k: list(v) for k, v in grid.items()},
                           "extend": {k: list(v) for k, v in extend.items()}, "epochs": EPOCHS,
                           "train_limit": TRAIN_LIMIT, "chosen_on": "seed 0, best epoch"},
              "commits": sorted({c["commit"] for c in cells.values()}),
              # the cells ran over several sessions, on whichever VM each had: every CPU named
              "machines": sorted({cpu_label(c["machine"]) for c in cells.values()}),
              "machine": max(cells.values(), key=lambda c: c["time"])["machine"] if cells
              else None,  # the newest cell's (its versions)
              "time": max((c["time"] for c in cells.values()), default=None),
              "answer": verdict(summary), "edge_note": edge_note(summary),
              # every other contrast of the report in the same words (the levers' and the
              # descendants' answers: README, deck and notebook 06 read them from here), each
              # variant against what it changes before against full fine-tuning
              "verdicts": {f"{a} - {b}": verdict(summary, a, b)
                           for a, b in sorted(contrasts(methods), key=lambda p: p[1] == "full")
                           if (a, b) != ("lora", "full")},
              "tasks": summary}
    text = json.dumps(_no_nan(record), indent=1, allow_nan=False) + "\n"  # strict JSON
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "fair.json", lambda tmp: Path(tmp).write_text(text))
    md = markdown(summary, methods)
    atomic_write(out / "fair.md", lambda tmp: Path(tmp).write_text(md))
    plot(cells, summary, out / "figures" / "fair_curves.png")
    plot_compare(summary, methods, out / "figures" / "fair_compare.png")
    return record


def report_all(*, root: Path, out: Path = RESULTS, reports=REPORTS,
               costs_file: Path = COSTS) -> dict[str, dict]:
    """Every report of ``reports``, each written to its folder under ``out``."""
    return {name: report(list(tasks), list(methods), root=root, out=out / name,
                         costs_file=costs_file)
            for name, (tasks, methods) in reports.items()}


def lever_reports(results: Path = RESULTS) -> list[dict]:
    """The levers' committed reports (``LEVERS``), capacity first."""
    return [json.loads((results / name / "fair.json").read_text()) for name in LEVERS]


def lever_verdicts(results: Path = RESULTS) -> dict[str, dict]:
    """Every lever's verdicts, as stored: each lever against LoRA, then against full."""
    return {c: v for f in lever_reports(results) for c, v in f["verdicts"].items()}


def verdicts_markdown(verdicts: dict[str, dict]) -> str:
    """Verdicts as README, deck and notebook 06 list them: each answer, then a line per task."""
    return "\n".join(f"- **{v['label']}**: {v['overall']}\n"
                     + "\n".join(f"  - {line}" for line in v["tasks"].values())
                     for v in verdicts.values())


def _points(d: dict) -> str:
    return f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def gap_answer(reports: list[dict]) -> str:
    """What closed LoRA's gap, a line per lever: on each task of the lever's report where LoRA
    is measurably below full fine-tuning (3+ seeds, the interval below zero), the lever's own
    difference from full fine-tuning beside LoRA's, and whether it is still below."""
    lines = []
    for f in reports:
        tasks = f["tasks"]
        gaps = {t: d for t, e in tasks.items()
                if (d := e.get("differences", {}).get("lora - full"))
                and d["n"] >= SEEDS_NEEDED and d["noise"] is False and d["mean"] < 0}
        methods = next(iter(tasks.values()))["methods"]
        for lever in (m for m in methods if m not in ("lora", "full")):
            if not gaps:
                names = ", ".join(get_task(t).folder for t in tasks)
                lines.append(f"- **{NAMES[lever]}**: ran on {names}, where LoRA is within seed "
                             "noise of full fine-tuning: no measured gap there to close.")
                continue
            parts = []
            for t, gap in gaps.items():
                d = tasks[t]["differences"].get(f"{lever} - full")
                if not d or d["n"] < SEEDS_NEEDED:
                    word = f"not measured with {SEEDS_NEEDED} seeds yet"
                elif d["noise"] is False and d["mean"] < 0:
                    word = f"still below, {_points(d)}"
                else:
                    word = f"closes it, {_points(d)}"
                parts.append(f"{get_task(t).folder} {word} (LoRA {_points(gap)})")
            lines.append(f"- **{NAMES[lever]}**: {'; '.join(parts)}.")
    return "\n".join(lines)


def demo_note(demo: dict, record: dict) -> str:
    """What ``make demo``'s single-seed gap means beside this study: the demo's LoRA - full
    (``compare.json``) next to the paired difference and its seed-to-seed spread measured here
    (``fair.json``), on the demo's task when it is measured, else on the tasks that are."""
    best = {r["method"]: r["best"] for r in demo["rows"]}
    if not {"lora", "full"} <= set(best):
        return ""
    folder = get_task(demo["task"]).folder
    gap = 100 * (best["lora"] - best["full"])
    lines = [f"This demo: LoRA − full fine-tuning = {gap:+.1f} points on {folder}, from one seed "
             f"at the default learning rates and {demo['config']['epochs']} epochs."]
    diffs = {t: e["differences"]["lora - full"] for t, e in record["tasks"].items()
             if "lora - full" in e.get("differences", {})}
    spread = {t: d for t, d in diffs.items() if d["n"] >= 2}
    if demo["task"] in spread:
        d = spread[demo["task"]]
        lines.append(f"The fair comparison on {folder} (tuned rates, {d['n']} seeds): "
                     f"{100 * d['mean']:+.1f} points, 95 % interval [{100 * d['low']:+.1f}, "
                     f"{100 * d['high']:+.1f}]; one seed's difference varies by "
                     f"{100 * d['sd']:.1f} points (sd) from seed to seed.")
    elif spread:
        sds = ", ".join(f"{get_task(t).folder} {100 * d['sd']:.1f}" for t, d in spread.items())
        lines.append(f"The fair comparison has not measured {folder} yet; on the tasks it has, "
                     f"one seed's LoRA − full difference varies from seed to seed by (sd, "
                     f"points): {sds}. A single-seed gap is a sample, not the answer.")
    else:
        lines.append("The fair comparison has no task with two seeds yet, so this gap has no "
                     "measured spread to compare with.")
    lines.append(f"The study so far: {record['answer']['overall']} "
                 "(results/fair.md, README 'LoRA against full fine-tuning, fairly').")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=described(__doc__))
    p.add_argument("action", choices=("run", "report", "costs", "note"),
                   help="costs: time each (task, method) idle, for the report's speed columns; "
                        "note: set a compare.json (--compare) beside this study's results")
    p.add_argument("--batches", type=int, default=24, help="for costs: batches timed")
    p.add_argument("--rounds", type=int, default=3, help="for costs: interleaved rounds")
    p.add_argument("--compare", help="for note: the compare.json of a `lora-jax compare` run")
    p.add_argument("--tasks", default="rte,mrpc,stsb,cola,sst2")
    p.add_argument("--methods", default="lora,full")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--limit", type=int, help="train at most this many cells, then stop")
    p.add_argument("--runs", default="runs/fair", help="run directories (resumable)")
    p.add_argument("--data-dir")
    p.add_argument("--model", help="the base model (default: the protocol's, minilm)")
    p.add_argument("--cells", default=str(RESULTS / "fair"),
                   help="the kept cells (default results/fair)")
    p.add_argument("--out", default=str(RESULTS),
                   help="for report: where fair.json, fair.md and figures/ go (default results)")
    p.add_argument("--all", action="store_true",
                   help="for report: every report of REPORTS (its own tasks and methods), each "
                        "in its folder under --out")
    args = p.parse_args()
    if args.all and args.action != "report":
        p.error("--all is for report")
    extra = {"model": args.model} if args.model else {}
    tasks, methods = args.tasks.split(","), args.methods.split(",")
    if args.action == "run":
        seeds = [int(s) for s in args.seeds.split(",")]
        run(tasks, methods, seeds, root=Path(args.cells), runs=Path(args.runs),
            data_dir=args.data_dir, limit=args.limit, **extra)
    elif args.action == "costs":
        for r in costs(tasks, methods, root=Path(args.cells), data_dir=args.data_dir,
                       batches=args.batches, rounds=args.rounds):
            print(f"{r['task']} {r['variant']}: {r['examples_per_s']:.1f} examples/s, "
                  f"{r['step_ms']:.0f} ms/step at mean length {r['mean_padded_length']}")
    elif args.action == "note":
        if not args.compare:
            p.error("note needs --compare PATH/compare.json")
        demo = json.loads(Path(args.compare).read_text())
        print(demo_note(demo, json.loads((Path(args.out) / "fair.json").read_text())))
    elif args.all:
        for name, record in report_all(root=Path(args.cells), out=Path(args.out)).items():
            print(f"{Path(args.out) / name / 'fair.md'}: {record['answer']['overall']}")
    else:
        print(markdown(report(tasks, methods, root=Path(args.cells), out=Path(args.out))["tasks"],
                       methods))


if __name__ == "__main__":
    main()
