"""Several methods on one task, side by side: quality and what it cost.

``compare`` trains each method with the same data, seed and budget, then measures for each:
the task metric (best and final epoch), trainable parameters with and without the head,
optimizer-state bytes, the compiled train step's memory (XLA's own accounting), the median step
time and examples per second, and the bytes of the saved adapter file. It writes
``compare.json``, ``compare.md`` and ``compare.png`` into the output directory.

Step times come from the training run itself, on whatever else the machine is doing; the table
shows the median at the bucket length that ran the most steps. For clean speed comparisons use
the benchmarks, which interleave methods and report medians.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
from pathlib import Path

import jax
import numpy as np

from lora_jax.config import TrainConfig
from lora_jax.files import atomic_write, check_output_dir, read_manifest, write_manifest
from lora_jax.glue import Task, get_task
from lora_jax.optim import count_params
from lora_jax.pretrained import load_pretrained
from lora_jax.run import LOG_EVERY, RunResult, check_run_dir, fit
from lora_jax.train import train_step
from lora_jax.trees import human_bytes, tree_bytes

COLUMNS = [  # (key, header, format)
    ("method", "method", "{}"),
    ("best", "best {primary}", "{:.4f}"),
    ("final", "final {primary}", "{:.4f}"),
    ("trainable_params", "trainable params", "{:,}"),
    ("trainable_params_without_head", "without head", "{:,}"),
    ("optimizer_state_bytes", "optimizer state", "{}"),
    ("step_memory_bytes", "step memory (XLA)", "{}"),
    ("median_step_ms", "median step ms", "{:.0f}"),
    ("step_length", "mean T", "{}"),
    ("examples_per_s", "examples/s", "{:.0f}"),
    ("checkpoint_bytes", "checkpoint", "{}"),
]


def step_memory(state, batch: dict) -> dict:
    """XLA's memory accounting of the compiled train step for this batch shape (bytes)."""
    mem = train_step.lower(state, batch).compile().memory_analysis()
    out = {k: int(getattr(mem, f"{k}_size_in_bytes", 0))
           for k in ("argument", "output", "temp", "alias")}
    out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def vector_isa(flags: set[str]) -> str:
    """The widest x86 vector extension in a CPU's flags: ``AVX-512``, ``AVX2`` or ``other``
    (speed results do not compare across these: XLA's matmuls run ~4x faster with AVX-512)."""
    if "avx512f" in flags:
        return "AVX-512"
    return "AVX2" if "avx2" in flags else "other"


def cpu_label(machine: dict) -> str:
    """A ``machine_info()`` record's CPU and vector ISA, as the speed tables name it: two CPUs
    with the same ISA can give opposite answers (the README's peer table), so each table keeps
    one row set per label."""
    name = machine["cpu"].replace("(R)", "").replace(" Processor", "")  # Intel(R) Xeon(R) ...
    label = f"{name} ({machine['isa']})" if machine.get("isa") else name
    return f"{label}, {cores_label(machine)}" if pinned(machine) else label


def pinned(machine: dict) -> bool:
    """Whether a run could use fewer cores than its machine has (``taskset``); the machine's
    count is recorded since 2026-12-02."""
    return machine.get("cores", 0) < machine.get("machine_cores", 0)


def cores_label(machine: dict) -> str:
    """``2 cores``, or ``1 of 2 cores`` for a pinned run."""
    of = f" of {machine['machine_cores']}" if pinned(machine) else ""
    return f"{machine['cores']}{of} cores"


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS has one (Linux)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def machine_info() -> dict:
    """The machine a measurement ran on: CPU name, its vector ISA (and the ISA XLA was
    limited to by ``--xla_cpu_max_isa``, when it was), the cores this process may run on
    and the machine's (fewer under ``taskset``), backend and versions."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = f.read().splitlines()
        names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        flags = next((set(ln.split(":", 1)[1].split()) for ln in lines
                      if ln.startswith("flags")), set())
        cpu = names[0] if names else cpu
    except OSError:
        pass
    limit = re.search(r"--xla_cpu_max_isa=(\S+)", os.environ.get("XLA_FLAGS", ""))
    import flax
    import optax

    return {"cpu": cpu, "isa": vector_isa(flags),
            "xla_max_isa": limit[1] if limit else None, "cores": usable_cores(),
            "machine_cores": os.cpu_count(),
            "backend": jax.default_backend(),
            "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "python": platform.python_version()}


def read_records(path: str | os.PathLike, kind: str | None = None, *,
                 missing_ok: bool = False) -> list[dict]:
    """The records of a benchmark's JSON-lines file in the order they were appended (blank
    lines skipped), only those whose ``benchmark`` is ``kind`` when it is given."""
    path = Path(path)
    if missing_ok and not path.is_file():
        return []
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return [r for r in rows if kind is None or r["benchmark"] == kind]


def latest(rows: list[dict], key) -> dict:
    """The last of ``rows`` for each ``key(row)``: a configuration measured again replaces its
    earlier row in a table."""
    return {key(r): r for r in rows}


COMPARE_KIND = "comparison"  # the manifest kind of a compare directory
OUTPUTS = ["compare.json", "compare.md", "compare.png"]


def measure(result: RunResult, cfg: TrainConfig, task: Task) -> dict:
    """One row of the comparison for a finished ``fit``: its scores and what it cost."""
    state = result.state
    # measure memory on a batch of the largest bucket (the run's worst case)
    length = result.info["buckets"][-1]
    probe = {"input_ids": np.zeros((cfg.batch_size, length), np.int32),
             "token_type_ids": np.zeros((cfg.batch_size, length), np.int32),
             "attention_mask": np.ones((cfg.batch_size, length), np.int32),
             "label": np.zeros(cfg.batch_size, np.float32 if task.is_regression else np.int32),
             "weight": np.ones(cfg.batch_size, np.float32)}
    mem = step_memory(state, probe)
    timing = result.step_time()
    return {
        "method": cfg.method,
        "best": result.best["eval"][task.primary],
        "best_epoch": result.best["epoch"],
        "final": result.final["eval"][task.primary],
        "eval_best": result.best["eval"],
        "trainable_params": count_params(state.variables, cfg.method),
        "trainable_params_without_head": count_params(state.variables, cfg.method,
                                                      include_head=False),
        "total_params": count_params(state.variables),
        "optimizer_state_bytes": tree_bytes(state.opt_state),
        "step_memory_bytes": mem["peak"],
        "step_memory": mem,
        "median_step_ms": timing["median_step_ms"],
        "step_length": round(timing["mean_step_length"], 1),
        "examples_per_s": timing["examples_per_s"],
        "checkpoint_bytes": (result.run_dir / "adapter.safetensors").stat().st_size,
        "learning_rate": cfg.lr,
        "real_token_fraction": result.info["real_token_fraction"],
    }


def compare(base: TrainConfig, methods: list[str], out_dir: str | os.PathLike, *,
            data_dir: str | None = None, progress: bool = True, mesh: str | None = None,
            overwrite: bool = False, log_every: int = LOG_EVERY) -> dict:
    """Train ``base`` once per method (same data, seed, epochs) and tabulate the results.

    ``out_dir`` gets one run directory per method and the tables; it must be new or empty, or
    (``overwrite``) a comparison written before, whose runs are then replaced one by one.
    """
    out = Path(out_dir)
    replace = check_output_dir(out, COMPARE_KIND, overwrite=overwrite)
    task = get_task(base.task)
    pre = load_pretrained(base.model, num_labels=task.num_labels, seed=base.seed,
                          quantize=base.quantize)
    for method in methods:  # every run directory checked before the first run trains
        check_run_dir(out / method, resume=False, overwrite=overwrite)
    owned = set(methods) | set(OUTPUTS) | set(read_manifest(out)["files"] if replace else [])
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, COMPARE_KIND, sorted(owned), {"task": task.name, "methods": methods})
    rows = []
    for method in methods:
        cfg = dataclasses.replace(base, method=method)
        result = fit(cfg, out / method, data_dir=data_dir, pretrained=pre, progress=progress,
                     mesh=mesh, overwrite=overwrite, log_every=log_every)
        rows.append(measure(result, cfg, task))
    report = {"task": task.name, "primary": task.primary, "config": base.to_json(),
              "methods": methods, "rows": rows, "machine": machine_info(),
              "train_examples": result.info["train_examples"],
              "dev_examples": result.info["dev_examples"]}
    atomic_write(out / "compare.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"))
    md = markdown_table(report)
    atomic_write(out / "compare.md", lambda tmp: Path(tmp).write_text(md))
    plot(report, out / "compare.png")
    return report


def markdown_table(report: dict) -> str:
    """The comparison as a Markdown table (the same numbers as ``compare.json``)."""
    primary = report["primary"]
    head = [h.format(primary=primary) for _, h, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        cells = []
        for key, _, fmt in COLUMNS:
            v = row[key]
            cells.append(human_bytes(v) if key.endswith("bytes") else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    cfg = report["config"]
    note = (f"\n{report['task']}: {report['train_examples']} training examples, "
            f"{report['dev_examples']} dev examples, {cfg['epochs']} epochs, batch "
            f"{cfg['batch_size']}, seed {cfg['seed']}, model {cfg['model']}; "
            f"{report['machine']['cpu']} ({report['machine']['cores']} cores), "
            f"jax {report['machine']['jax']}.\n")
    return "\n".join(lines) + "\n" + note


def plot(report: dict, path: Path) -> None:
    """Bar charts: the metric, and trainable parameters (log scale), per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    names = [r["method"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    a1.bar(names, [r["best"] for r in rows], color="tab:blue")
    a1.set_title(f"{report['task']}: best dev {report['primary']}")
    a2.bar(names, [r["trainable_params"] for r in rows], color="tab:orange")
    a2.set_yscale("log")
    a2.set_title("trainable parameters (log)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
