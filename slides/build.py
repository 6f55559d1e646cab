"""Fill the generated blocks of ``slides/lora.md`` and ``README.md`` from the project's results.

Every number of ours in the deck sits between ``<!-- generated:NAME -->`` and
``<!-- /generated:NAME -->``; this script renders each block from ``results/`` (benchmark JSON)
or from ``lora_jax`` itself (parameter counts from shapes), and rewrites only those blocks. The
paper's numbers come from ``lora_jax.paper`` and are labelled as the paper's.

    python slides/build.py            # rewrite the blocks in place
    python slides/build.py --check    # exit 1 if any block is out of date (the tests run this)
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from lora_jax.compare import cpu_label, latest, read_records

ROOT = Path(__file__).resolve().parents[1]
DECK = ROOT / "slides" / "lora.md"
README = ROOT / "README.md"
DOCS = (DECK, README)  # every file with generated blocks
RESULTS = ROOT / "results"
BLOCK = re.compile(r"(<!-- generated:(?P<name>[a-z0-9_]+) -->\n)(?P<body>.*?)"
                   r"(<!-- /generated:(?P=name) -->)", re.S)
sys.path.insert(0, str(ROOT / "benchmarks"))
import fair as study  # noqa: E402  (benchmarks/fair.py: its reports, the levers among them)

GPT3 = {"layers": 96, "d_model": 12288, "params": 175e9}  # Brown et al. (2020), Table 2.1


def _jsonl(name: str, kind: str) -> list[dict]:
    return read_records(RESULTS / name, kind)


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n / 1e3:,.0f} KB"


def _machine(r: dict) -> str:
    m = r["machine"]
    isa = f" ({m['isa']})" if m.get("isa") else ""  # recorded since 2026-12-01
    return f"{m['cpu']}{isa}, {_cores_jax(r)}, {r['time'][:10]}"


def _cores_jax(r: dict) -> str:
    """The footnote of a table whose rows each name their CPU: what the rows share (the
    machine's cores; a row pinned to fewer says so in its CPU label)."""
    m = r["machine"]
    return f"{m.get('machine_cores', m['cores'])} cores, jax {m['jax']}"


def params() -> str:
    """LoRA r = 8 on query,value (r = 4 for GPT-3, as in the paper) vs every weight."""
    from lora_jax import LoRAConfig, ModelConfig
    from lora_jax.pretrained import load_config
    from lora_jax.report import parameter_report

    lines = ["| model | all weights | LoRA trainable (no head) | formula 2·L·d·r | fewer |",
             "|---|---|---|---|---|"]
    for name, cfg in (("all-MiniLM-L6-v2", load_config("minilm", num_labels=2)),
                      ("RoBERTa-base", ModelConfig.roberta_base(num_labels=2))):
        lora = LoRAConfig(rank=8, alpha=16.0, targets=("query", "value"))
        rep = parameter_report(cfg, "lora", lora)
        formula = 2 * cfg.num_hidden_layers * 2 * cfg.hidden_size * 8  # q and v: A and B each
        assert formula == rep["trainable_params_without_head"], (name, formula, rep)
        lines.append(f"| {name} | {rep['total_params']:,} | "
                     f"{rep['trainable_params_without_head']:,} | {formula:,} | "
                     f"{rep['total_params'] / formula:,.0f}x |")
    g = 2 * GPT3["layers"] * 2 * GPT3["d_model"] * 4
    lines.append(f"| GPT-3 175B (r = 4) | 175B | {g:,} | {g:,} | {GPT3['params'] / g:,.0f}x |")
    return "\n".join(lines) + ("\n\n*Counted from shapes with `jax.eval_shape` "
                               "(`lora_jax.report.parameter_report`); GPT-3 by the formula.*")


def _train_steps() -> tuple[dict, dict]:
    minilm_f32 = [r for r in _jsonl("train_step.jsonl", "train_step")
                  if r["config"].get("model", "minilm") == "minilm"
                  and r["config"].get("dtype", "float32") == "float32"]
    rows = latest(minilm_f32, lambda r: (r["config"]["seq"], r["config"]["method"]))
    peak = _jsonl("train_step.jsonl", "matmul_peak")[-1]
    return rows, peak


def cost() -> str:
    rows, peak = _train_steps()
    t = 64
    full = rows[(t, "full")]
    lines = ["| method | trainable (no head) | optimizer state | step ms | / full | GFLOP/step |",
             "|---|---|---|---|---|---|"]
    for m in ("full", "lora", "bitfit", "adapter", "head"):
        r = rows[(t, m)]
        lines.append(f"| {m} | {r['trainable_params_without_head']:,} | "
                     f"{_mb(r['optimizer_state_bytes'])} | {r['step_ms_median']:.0f} | "
                     f"{r['step_ms_median'] / full['step_ms_median']:.2f} | "
                     f"{r['flops'] / 1e9:.0f} |")
    return "\n".join(lines) + (f"\n\n*Batch 32, T = {t}, MiniLM; methods interleaved, medians; "
                               f"`python benchmarks/train_step.py`; {_machine(full)}.*")


def cost_facts() -> str:
    rows, peak = _train_steps()
    lora, full = rows[(64, "lora")], rows[(64, "full")]
    return (f"- optimizer state: **{_mb(lora['optimizer_state_bytes'])}** vs "
            f"{_mb(full['optimizer_state_bytes'])} "
            f"({100 * lora['optimizer_state_bytes'] / full['optimizer_state_bytes']:.2f} %)\n"
            f"- XLA FLOPs of a step: {lora['flops'] / full['flops']:.2f} of full; measured time: "
            f"{lora['step_ms_median'] / full['step_ms_median']:.2f} of full\n"
            f"- achieved: {100 * lora['fraction_of_matmul_peak']:.0f} % of this CPU's matmul "
            f"peak ({peak['gflops']:.0f} GFLOP/s)")


def _cpu(r: dict) -> str:
    return cpu_label(r["machine"])


def peer() -> str:
    rows = latest([r for r in _jsonl("peer.jsonl", "peer") if r["machine"].get("isa")],
                   lambda r: (_cpu(r), r["config"]["seq"]))
    lines = ["| CPU | T | LoRA: ours / PEFT | full: ours / PEFT | LoRA / full, ours "
             "| LoRA / full, PEFT |",
             "|---|---|---|---|---|---|"]
    for key in sorted(rows, key=lambda k: (rows[k]["time"][:10], k)):
        r = rows[key]
        lines.append(f"| {key[0]} | {key[1]} | {r['jax_over_peft_lora']:.2f} | "
                     f"{r['jax_over_peft_full']:.2f} | "
                     f"{r['lora_over_full_jax']:.2f} | {r['lora_over_full_peft']:.2f} |")
    last = max(rows.values(), key=lambda r: r["time"])
    return "\n".join(lines) + ("\n\n*Train-step time ratios, batch 32, MiniLM, interleaved "
                               "with PyTorch + PEFT (eager) in one run, the latest run per CPU; "
                               f"`python benchmarks/peer.py`; {_cores_jax(last)}.*")


def peer_md() -> str:
    """The README's full peer table: ``results/peer.md`` as ``benchmarks/tables.py`` wrote it."""
    return (RESULTS / "peer.md").read_text(encoding="utf-8")


def profile() -> str:
    """Where the step's time goes, per mode: the op groups and the largest places."""
    rows = latest(_jsonl("profile.jsonl", "profile"),
                   lambda r: (_cpu(r), r["config"]["mode"], r["config"]["seq"]))
    lines = ["| CPU | step | wall ms | dots | batched dots (attention) | elementwise | dot GFLOP "
             "| step GFLOP/s (of peak) | largest non-dot places (share of busy time) | measured |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (where, mode, seq), r in sorted(rows.items(), key=lambda kv: (kv[1]["time"][:10],
                                                                      kv[0])):
        g = r["group_share"]
        other = [p for p in r["places"] if not p["place"].startswith("dot")][:3]
        places = "; ".join(f"{p['place'].split(' | ')[1]} {100 * p['share']:.1f} %"
                           for p in other)
        lines.append(
            f"| {where} | {mode}, T = {seq} | {r['wall_step_ms']:.0f} | "
            f"{100 * g.get('dot', 0):.0f} % | "
            f"{100 * g.get('batched dot', 0):.0f} % | {100 * g.get('elementwise', 0):.0f} % | "
            f"{r['dot_gflop_per_step']:.0f} | {r['step_gflop_s']:.0f} "
            f"({100 * r['step_gflop_s'] / r['matmul_peak_gflop_s']:.0f} % of "
            f"{r['matmul_peak_gflop_s']:.0f}) | {places} | {r['time'][:10]} |")
    last = max(rows.values(), key=lambda r: r["time"])
    return "\n".join(lines) + (
        "\n\n*Shares of XLA's busy time per step (`jax.profiler` trace, batch 32, dropout off; "
        "`python benchmarks/profile_step.py --mode lora --seq 64`); step GFLOP/s: the dots' "
        "FLOPs over the wall-clock step, against the same run's 2048^3 matmul (a VM's speed varies "
        "between days: compare shares and fractions of peak, not milliseconds across dates); the "
        f"latest run per CPU; {_cores_jax(last)}.*")


def _shapes(r: dict) -> list[str]:
    """A matmul record's shape names in the order the benchmark ran them (forward, then the
    backward layouts), not the JSON's sorted order."""
    names = [(f"{b}x" if b > 1 else "") + f"{m}x{k}x{n}" for b, m, k, n in r["config"]["shapes"]]
    names += [f"{m}x{k}x{n} {layout}" for m, k, n, layout in r["config"].get("backward", [])]
    return [n for n in names if n in r["gflops"]["xla"]]


def matmul() -> str:
    """f32 matmul GFLOP/s per library on the step's shapes: the latest run without limits on
    each CPU."""
    runs = latest([r for r in _jsonl("matmul.jsonl", "matmul")
                    if not any(r["limits"].get(k) for k in ("XLA_FLAGS", "ATEN_CPU_CAPABILITY"))],
                   _cpu)
    names = {"xla": "XLA (ours)", "torch": "PyTorch", "numpy": "numpy (OpenBLAS)"}
    lines = ["| CPU | shape (batch x m x k x n) | " + " | ".join(names.values())
             + " | XLA / PyTorch |", "|---" * (len(names) + 3) + "|"]
    for where, r in sorted(runs.items(), key=lambda kv: kv[1]["time"]):
        for shape in _shapes(r):
            cells = " | ".join(f"{r['gflops'][lib][shape]:.0f}" if lib in r["gflops"] else ""
                               for lib in names)
            ratio = (f"{r['gflops']['xla'][shape] / r['gflops']['torch'][shape]:.2f}"
                     if "torch" in r["gflops"] else "")
            lines.append(f"| {where}, {r['time'][:10]} | {shape} | {cells} | {ratio} |")
    last = max(runs.values(), key=lambda r: r["time"])
    return "\n".join(lines) + (
        "\n\n*f32 GFLOP/s, median of " + str(last["config"]["reps"]) + " calls "
        "(`python benchmarks/matmul.py --peer-python .venv-peer/bin/python`); "
        f"{_cores_jax(last)}.*")


def speed_changes() -> str:
    """Each speed change tried, measured against the version before it in one run."""
    rows = _jsonl("speed_changes.jsonl", "versions")
    lines = ["| change | step | new / before (median of rounds) | per round | machine |",
             "|---|---|---|---|---|"]
    for r in rows:
        what = (f"`{r['new_env']}`" if r.get("new_env")
                else f"{r['new']}: {r['subject'].split(':')[0]}")
        lines.append(f"| {what} | {r['config']['mode']}, T = {r['config']['seq']} | "
                     f"{r['new_over_base']:.2f} | "
                     f"{', '.join(f'{x:.2f}' for x in r['round_ratios'])} | "
                     f"{_cpu(r)}, {r['time'][:10]} |")  # the VM differs between sessions
    return "\n".join(lines) + (
        "\n\n*Each row: the train step (batch 32) of the version before and after, each in its "
        "own process, alternating (`python benchmarks/versions.py --base SHA --new SHA`, or "
        f"`--new-env` for an XLA setting); {_cores_jax(rows[-1])}.*")


def latency() -> str:
    rows = latest(_jsonl("latency.jsonl", "latency"),
                   lambda r: (r["config"]["batch"], r["config"]["seq"], r["config"]["variant"]))
    shapes = sorted({(b, t) for b, t, _ in rows})
    lines = ["| batch | T | base ms | merged LoRA | unmerged LoRA | adapters |",
             "|---|---|---|---|---|---|"]
    for b, t in shapes:
        pct = [f"{rows[(b, t, v)]['pct_over_base']:+.1f} %"
               for v in ("lora_merged", "lora_unmerged", "adapter")]
        lines.append(f"| {b} | {t} | {rows[(b, t, 'base')]['ms_median']:.1f} | "
                     + " | ".join(pct) + " |")
    last = list(rows.values())[-1]
    return "\n".join(lines) + ("\n\n*Forward latency over the base model, medians of interleaved "
                               f"rounds; `python benchmarks/latency.py`; {_machine(last)}.*")


def _glue() -> dict:
    return json.loads((RESULTS / "glue.json").read_text())


def glue() -> str:
    from lora_jax.data import get_task

    g = _glue()
    cells, methods = g["results"], g["config"]["methods"]
    tasks = list(cells)
    lines = ["| method | trainable | " + " | ".join(get_task(t).folder for t in tasks)
             + " | avg |", "|" + "---|" * (len(tasks) + 3)]
    for m in methods:
        scores = [100 * cells[t][m]["median"] for t in tasks]
        lines.append(f"| {m} | {cells[tasks[0]][m]['trainable_params']:,} | "
                     + " | ".join(f"{s:.1f}" for s in scores)
                     + f" | {statistics.mean(scores):.1f} |")
    seeds = len(g["config"]["seeds"])
    return "\n".join(lines) + (f"\n\n*all-MiniLM-L6-v2, GLUE dev x100 (MCC for CoLA, Pearson "
                               f"for STS-B), {g['config']['epochs']} epochs, median of {seeds} "
                               f"seed(s); `python benchmarks/glue.py`; {_machine(g)}.*")


def glue_facts() -> str:
    g = _glue()
    cells = g["results"]
    gaps = [100 * (cells[t]["lora"]["median"] - cells[t]["full"]["median"]) for t in cells]
    share = cells[next(iter(cells))]["lora"]
    return (f"- LoRA trains {100 * share['trainable_params'] / share['total_params']:.2f} % of "
            f"the model (head included)\n- LoRA - full fine-tuning, averaged over "
            f"{len(gaps)} tasks: **{statistics.mean(gaps):+.1f} points**")


def _fair() -> dict:
    return json.loads((RESULTS / "fair.json").read_text())


def _score(m: dict) -> str:
    if not m.get("best"):
        return "-"
    mean, sd = m["best"]
    return f"{100 * mean:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}")


def _after_fair() -> dict:
    return json.loads((RESULTS / "after_lora" / "fair.json").read_text())


def _searching(m: dict) -> str:
    """A variant without a chosen rate: how far its rate search got."""
    tried = len(m.get("grid") or {})
    return f"rate search: {tried} rate(s) so far" if tried else "not run yet"


def _interval(d: dict | None) -> str:
    """A paired difference's 95 % interval in points, "-" before two seeds pair up."""
    if d is None or d["low"] is None:
        return "-"
    return f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def _rates(xs) -> str:
    return ", ".join(f"{x:g}" for x in xs)


def fair() -> str:
    """LoRA against full fine-tuning at tuned rates (``benchmarks/fair.py``): per task the
    chosen rates, best-epoch scores over seeds and the paired difference with its interval."""
    from lora_jax.data import get_task

    f = _fair()
    lines = ["| task | LoRA at lr | full at lr | seeds | LoRA − full | 95 % interval |",
             "|---|---|---|---|---|---|"]
    for task, e in f["tasks"].items():
        lora, full = e["methods"]["lora"], e["methods"]["full"]
        d = e.get("differences", {}).get("lora - full")
        rate = lambda m: f" at {m['rate']}" if m.get("best") else ""  # noqa: E731
        seeds = f"{len(lora['seeds'])} + {len(full['seeds'])}" if d else "-"
        gap = f"{100 * d['mean']:+.1f}" if d else "not measured yet"
        lines.append(f"| {get_task(task).folder} | {_score(lora)}{rate(lora)} | "
                     f"{_score(full)}{rate(full)} | {seeds} | {gap} | {_interval(d)} |")
    p = f["protocol"]
    epochs = sorted(set(p["epochs"].values()), reverse=True)
    return "\n".join(lines) + (
        f"\n\n*all-MiniLM-L6-v2, best-epoch dev x100 (mean ± sd over seeds), learning rate "
        f"chosen per task and method on seed 0 from LoRA {_rates(p['grid']['lora'])} / full "
        f"{_rates(p['grid']['full'])} (one step further at an edge), "
        f"{' or '.join(map(str, epochs))} epochs; `python benchmarks/fair.py report`; "
        f"cells run on {' and '.join(f['machines'])}, {_cores_jax(f)}, newest "
        f"{f['time'][:10]}.*") + (f"\n\n*{f['edge_note']}*" if f.get("edge_note") else "")


def fair_answer() -> str:
    a = _fair()["answer"]
    head = "**The answer**" if a["complete"] else "**The answer so far**"
    return f"{head}: {a['overall']}\n\n" + "\n".join(f"- {t}" for t in a["tasks"].values())


def levers() -> str:
    """What the levers closed (``fair.LEVERS``: results/rank/, layers/, epochs/): each against
    LoRA r = 8 on query,value and against full fine-tuning, in the main answer's words."""
    return study.verdicts_markdown(study.lever_verdicts(RESULTS))


def levers_gap() -> str:
    """Each lever where LoRA's gap is real: its own difference from full fine-tuning, beside
    LoRA's, and whether it is still below (``fair.gap_answer``)."""
    return study.gap_answer(study.lever_reports(RESULTS))


def levers_short() -> str:
    """The deck's one line per lever: its paired difference from LoRA per task."""
    from lora_jax.data import get_task

    def part(task: str, d: dict) -> str:
        name = get_task(task).folder
        if d["low"] is None:
            return f"{name} {100 * d['mean']:+.1f} (1 seed)"
        return f"{name} {100 * d['mean']:+.1f} {_interval(d)} ({d['n']} seeds)"

    lines = []
    for f in study.lever_reports(RESULTS):
        for contrast, v in f["verdicts"].items():
            if contrast.endswith(" - lora"):  # the tasks measured so far (the README has all)
                parts = [part(t, e["differences"][contrast]) for t, e in f["tasks"].items()
                         if e.get("differences", {}).get(contrast)]
                lines.append(f"- {v['label']}: {'; '.join(parts) or 'not measured yet'}")
    return "\n".join(lines)


def qlora() -> str:
    """The frozen base in each storage format and LoRA's compiled step on it
    (``benchmarks/qlora.py``), with the paper's 65B arithmetic from its formulas."""
    rows = _jsonl("qlora/costs.jsonl", "qlora")
    sizes = latest([r for r in rows if r["kind"] == "bytes"], lambda r: r["format"])
    steps = latest([r for r in rows if r["kind"] == "step"], lambda r: r["base"])
    paper = [r for r in rows if r["kind"] == "paper_65b"][-1]
    lines = ["| base stored as | dense kernels (bits / weight) | whole base | step: XLA temp "
             "| step: XLA peak | step × float |", "|---|---|---|---|---|---|"]
    for fmt, r in sizes.items():
        st = steps.get(fmt)
        step = (f"{_mb(st['memory']['temp'])} | {_mb(st['memory']['peak'])} | "
                f"{st['step_vs_float']:.2f}" if st else "- | - | -")
        lines.append(f"| {fmt} | {_mb(r['kernel_bytes'])} ({r['kernel_bits_per_weight']:.2f}) | "
                     f"{_mb(r['total_bytes'])} | {step} |")
    last = list(steps.values())[-1]
    return "\n".join(lines) + (
        f"\n\n*MiniLM; LoRA r = 8 on query,value, batch {last['config']['batch']}, T = "
        f"{last['config']['seq']} (`python benchmarks/qlora.py`; {_machine(last)}). The paper's "
        f"65B, from its formulas: {paper['full_16bit_gb']:.0f} GB for 16-bit full fine-tuning, "
        f"a {paper['base_16bit_gb']:.0f} GB 16-bit base, {paper['base_nf4_dq_gb']:.1f} GB in "
        "NF4 with double quantization.*")


def qlora_quality() -> str:
    """The paper's claim that NF4 + LoRA matches 16-bit LoRA, on our model: LoRA on the NF4
    base against LoRA on the float base, each at its own tuned rate, seed by seed
    (``results/after_lora/fair.json``)."""
    from lora_jax.data import get_task

    f = _after_fair()

    def score(m: dict) -> str:
        if not m.get("best"):
            return _searching(m)
        n = len(m["seeds"])
        return f"{_score(m)} at {m['rate']} ({n} seed{'s' * (n > 1)})"

    lines = ["| task | LoRA, float base | LoRA, NF4 base | NF4 − float | 95 % interval |",
             "|---|---|---|---|---|"]
    for task, e in f["tasks"].items():
        d = e.get("differences", {}).get("qlora - lora")
        gap = f"{100 * d['mean']:+.1f}" if d else "-"
        lines.append(f"| {get_task(task).folder} | {score(e['methods']['lora'])} | "
                     f"{score(e['methods'].get('qlora', {}))} | {gap} | {_interval(d)} |")
    return "\n".join(lines) + (
        "\n\n*Best-epoch dev x100, mean ± sd over seeds, r = 8 on query,value; NF4 − float is "
        "the mean of the per-seed differences with its 95 % t-interval (`python "
        f"benchmarks/fair.py run --tasks {','.join(f['tasks'])} --methods qlora --seeds 0,1,2`, "
        "then `report --all`; notebook 10).*") + _claim(f)


def _outside(f: dict, v: dict) -> list[tuple[str, str, float]]:
    """The tasks where fair.py's verdict ``v`` found its contrast outside seed noise, in the
    report's task order: ``("above" | "below", task name, mean difference)``."""
    from lora_jax.data import get_task

    return [("above" if t in v["above"] else "below", get_task(t).folder,
             e["differences"][v["contrast"]]["mean"])
            for t, e in f["tasks"].items() if t in v["above"] + v["below"]]


def _claim(f: dict) -> str:
    """The paper's QLoRA claim judged on the paired NF4 − float differences: "so far" (with
    fair.py's verdict) until every task has its seeds, then which tasks it holds on."""
    from lora_jax.data import get_task

    v = f.get("verdicts", {}).get("qlora - lora")
    if not v:
        return ""
    if not v["complete"]:
        return f"\n\n**So far**: {v['overall']}"
    off = _outside(f, v)
    if off:
        parts = ", ".join(f"{name} ({100 * mean:+.1f})" for _, name, mean in off)
        return (f"\n\n**The paper's claim does not hold on every task here**: NF4 − float "
                f"is outside seed noise on {parts}.")
    bound = max(max(-e["differences"]["qlora - lora"]["low"],
                    e["differences"]["qlora - lora"]["high"]) for e in f["tasks"].values())
    held = " and ".join(get_task(t).folder for t in v["noise"])
    return (f"\n\n**The paper's claim holds on our model, within seed noise**: NF4 − float's "
            f"95 % interval contains 0 on {held}, and no bound is more than "
            f"{100 * bound:.1f} points from 0.")


AFTER = {"lora": ("LoRA r = 8", None), "dora": ("DoRA", "lora"),
         "loraplus": ("LoRA+ (λ = 16)", "lora"), "pissa": ("PiSSA", "lora"),
         "lora-r64": ("LoRA r = 64", "lora"), "rslora-r64": ("rsLoRA r = 64", "lora-r64")}
# variant: (its name, the variant it is compared with)


def after_lora() -> str:
    """LoRA's descendants, measured: the cost from ``benchmarks/after_lora.py`` and the quality
    against what each changes, under the fair protocol (``results/after_lora/fair.json``)."""
    from lora_jax.data import get_task

    rows = read_records(RESULTS / "after_lora" / "costs.jsonl")
    train = latest([r for r in rows if r["kind"] == "train"], lambda r: r["variant"])
    infer = latest([r for r in rows if r["kind"] == "inference"],
                    lambda r: (r["variant"], r["batch"]))
    batches = sorted({b for _, b in infer})
    f = _after_fair()
    tasks = list(f["tasks"])
    lines = ["| | trainable (no head) | step × LoRA | "
             + " | ".join(f"batch {b}: merged / unmerged" for b in batches) + " | "
             + " | ".join(f"{get_task(t).folder} − ref." for t in tasks) + " |",
             "|" + "---|" * (3 + len(batches) + len(tasks))]
    for v, (name, ref) in AFTER.items():
        base = v if v in ("lora", "dora") else None
        speed = ["as LoRA"] * len(batches)
        if base:
            speed = [" / ".join(f"{infer[(f'{base}_{k}', b)]['pct_over_base']:+.0f} %"
                                for k in ("merged", "unmerged")) for b in batches]
        quality = []
        for task in tasks:
            d = f["tasks"][task].get("differences", {}).get(f"{v} - {ref}") if ref else None
            if ref is None:
                quality.append(f"= {_score(f['tasks'][task]['methods'][v])}")
            elif d is None:
                quality.append(_searching(f["tasks"][task]["methods"].get(v, {})))
            elif d["low"] is None:
                quality.append(f"{100 * d['mean']:+.1f} (1 seed)")
            else:
                quality.append(f"{100 * d['mean']:+.1f} {_interval(d)} ({d['n']})")
        lines.append(f"| {name} | {train[v]['trainable_params_without_head']:,} | "
                     f"{train[v]['step_vs_lora']:.2f} | " + " | ".join(speed) + " | "
                     + " | ".join(quality) + " |")
    last = list(train.values())[-1]
    return "\n".join(lines) + (
        f"\n\n*MiniLM, r = 8 on query,value unless noted. Step: batch {last['config']['batch']}, "
        f"T = {last['config']['seq']}; inference: % over the base model; medians of interleaved "
        f"rounds (`python benchmarks/after_lora.py`; {_machine(last)}). Quality: best-epoch dev "
        "x100 (LoRA r = 8's own score, mean ± sd), each other variant minus the one it changes "
        "(LoRA r = 8; rsLoRA minus LoRA r = 64), "
        "mean over seeds [95 % interval] (seeds), rates tuned per variant on seed 0 "
        "(`python benchmarks/fair.py report --methods ... --out results/after_lora`).*"
    ) + _after_claim(f)


def _after_claim(f: dict) -> str:
    """What the quality columns say, from fair.py's verdict on each variant against the one it
    changes: which moved quality outside seed noise and where, which stayed within it on every
    task, and which tasks are still to measure ("so far" until none are)."""
    from lora_jax.data import get_task

    moved, quiet, todo = [], [], []
    for v, (_, ref) in AFTER.items():
        vd = f.get("verdicts", {}).get(f"{v} - {ref}") if ref else None
        if vd is None:
            continue
        out = [f"{side} on {name} ({100 * mean:+.1f})" for side, name, mean in _outside(f, vd)]
        if out:
            moved.append(f"{vd['label']} {', '.join(out)}")
        elif vd["complete"]:
            quiet.append(vd["label"])
        if vd["missing"]:
            todo.append(f"{vd['label']} on "
                        + " and ".join(get_task(t).folder for t in vd["missing"]))
    if not (moved or quiet or todo):
        return ""
    n = study.SEEDS_NEEDED
    lines = [f"outside seed noise ({n} seeds, a 95 % interval that excludes 0): {'; '.join(moved)}."
             if moved else f"no variant is outside seed noise on a task with {n} seeds."]
    if quiet:
        lines.append(f"Within seed noise on every task: {', '.join(quiet)}.")
    if todo:
        lines.append(f"Still to measure: {'; '.join(todo)}.")
    return f"\n\n**Quality{', so far' if todo else ''}**: " + " ".join(lines)


def paper_table2() -> str:
    from lora_jax.data import get_task
    from lora_jax.paper import PAPER, TABLE2_ROBERTA_BASE, TABLE2_TASKS

    lines = ["| RoBERTa-base | trainable | " + " | ".join(get_task(t).folder
                                                        for t in TABLE2_TASKS) + " | avg |",
             "|" + "---|" * (len(TABLE2_TASKS) + 3)]
    for m, (n, scores, avg) in TABLE2_ROBERTA_BASE.items():
        lines.append(f"| {m} | {n} | " + " | ".join(f"{scores[t]:.1f}" for t in TABLE2_TASKS)
                     + f" | {avg:.1f} |")
    return "\n".join(lines) + f"\n\n*The paper's numbers: {PAPER}, Table 2 (GLUE dev).*"


def storage() -> str:
    report = json.loads((RESULTS / "glue" / "mrpc-seed0.json").read_text())
    size = {r["method"]: r["checkpoint_bytes"] for r in report["rows"]}
    lines = ["| tasks | N full copies | one base + N LoRA files |", "|---|---|---|"]
    for n in (1, 10, 100):
        lines.append(f"| {n} | {_mb(n * size['full'])} | "
                     f"{_mb(size['full'] + n * size['lora'])} |")
    return "\n".join(lines) + (f"\n\n*Measured file sizes (safetensors): a full MiniLM copy "
                               f"{_mb(size['full'])}, a LoRA adapter with its head "
                               f"{_mb(size['lora'])}.*")


BLOCKS: dict[str, Callable[[], str]] = {
    "params": params, "cost": cost, "cost_facts": cost_facts, "peer": peer,
    "latency": latency, "glue": glue, "glue_facts": glue_facts, "paper_table2": paper_table2,
    "storage": storage, "fair": fair, "fair_answer": fair_answer, "levers": levers,
    "levers_gap": levers_gap, "levers_short": levers_short, "after_lora": after_lora,
    "qlora": qlora, "qlora_quality": qlora_quality, "peer_md": peer_md, "profile": profile,
    "matmul": matmul, "speed_changes": speed_changes,
}


def render(text: str, where: Path = DECK) -> str:
    """``text`` (of the file ``where``) with every generated block re-rendered; an unknown
    block name is an error."""
    def fill(m: re.Match) -> str:
        name = m["name"]
        if name not in BLOCKS:
            raise KeyError(f"{where.name}: unknown generated block {name!r}; "
                           f"known: {sorted(BLOCKS)}")
        return f"{m.group(1)}{BLOCKS[name]().rstrip()}\n{m.group(4)}"
    return BLOCK.sub(fill, text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="only report blocks out of date")
    args = p.parse_args()
    stale = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        new = render(text, doc)
        if args.check:
            stale += [f"{doc.relative_to(ROOT)}:{m['name']}" for m, n in
                      zip(BLOCK.finditer(text), BLOCK.finditer(new), strict=True)
                      if m["body"] != n["body"]]
            continue
        if new != text:
            tmp = doc.with_suffix(".md.tmp")
            tmp.write_text(new, encoding="utf-8")
            tmp.replace(doc)
        print(f"{doc.relative_to(ROOT)}: {len(BLOCK.findall(new))} generated blocks")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python slides/build.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
