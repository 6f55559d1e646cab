"""Markdown tables from the benchmark JSON lines under ``results/``: ``train_step.md``,
``latency.md`` and ``peer.md`` (the latest record of each configuration wins).

    python benchmarks/tables.py
"""

from __future__ import annotations

from pathlib import Path

from common import RESULTS

from lora_jax.compare import cores_label, cpu_label, human_bytes, latest, read_records
from lora_jax.files import atomic_write


def records(name: str, kind: str) -> list[dict]:
    return read_records(RESULTS / name, kind, missing_ok=True)


def machine_line(r: dict) -> str:
    m = r["machine"]
    isa = f"{m['isa']}, " if m.get("isa") else ""  # recorded since 2026-12-01
    return (f"\nMeasured {r['time'][:10]} on {m['cpu']} ({isa}{cores_label(m)}, "
            f"{m['backend']}), "
            f"jax {m['jax']}, flax {m['flax']}, optax {m['optax']}.\n")


def cpu(r: dict) -> str:
    return cpu_label(r["machine"])


def default_model(r: dict) -> bool:
    """MiniLM in float32: the table's setting (other models and dtypes are separate runs)."""
    return (r["config"].get("model", "minilm") == "minilm"
            and r["config"].get("dtype", "float32") == "float32")


def train_step_table() -> str:
    peak = records("train_step.jsonl", "matmul_peak")
    rows = list(latest([r for r in records("train_step.jsonl", "train_step")
                        if default_model(r)],
                       lambda r: (r["config"]["seq"], r["config"]["method"])).values())
    if not rows:
        return ""
    rows.sort(key=lambda r: (r["config"]["seq"], r["config"]["method"]))
    full = {r["config"]["seq"]: r["step_ms_median"] for r in rows
            if r["config"]["method"] == "full"}
    lines = ["| T | method | median ms (min) | / full | examples/s | GFLOP/step | GFLOP/s | "
             "of matmul peak | XLA temp | optimizer state | trainable (w/o head) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["config"]["seq"]
        lines.append(
            f"| {t} | {r['config']['method']} | {r['step_ms_median']:.0f} "
            f"({r['step_ms_min']:.0f}) | {r['step_ms_median'] / full[t]:.2f} | "
            f"{r['examples_per_s']:.0f} | {r['flops'] / 1e9:.1f} | {r['gflops_achieved']:.0f} | "
            f"{100 * r['fraction_of_matmul_peak']:.0f} % | "
            f"{human_bytes(r['xla_memory']['temp'])} | {human_bytes(r['optimizer_state_bytes'])} "
            f"| {r['trainable_params']:,} ({r['trainable_params_without_head']:,}) |")
    note = (f"\nBatch 32, MiniLM, dropout off, no padding; methods interleaved in "
            f"{rows[0]['config']['rounds']} rounds of {rows[0]['config']['steps']} steps. "
            f"Jitted f32 2048³ matmul peak in the same run: {peak[-1]['gflops']:.0f} GFLOP/s.")
    return "\n".join(lines) + "\n" + note + machine_line(rows[-1])


def latency_table() -> str:
    rows = list(latest(records("latency.jsonl", "latency"), lambda r: (
        r["config"]["batch"], r["config"]["seq"], r["config"]["variant"])).values())
    if not rows:
        return ""
    variants = ["base", "lora_merged", "lora_unmerged", "adapter"]
    shapes = sorted({(r["config"]["batch"], r["config"]["seq"]) for r in rows})
    get = {(r["config"]["batch"], r["config"]["seq"], r["config"]["variant"]): r for r in rows}
    lines = ["| batch | T | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]
    for b, t in shapes:
        cells = []
        for v in variants:
            r = get[(b, t, v)]
            pct = "" if v == "base" else f" ({r['pct_over_base']:+.1f} %)"
            cells.append(f"{r['ms_median']:.2f}{pct}")
        lines.append(f"| {b} | {t} | " + " | ".join(cells) + " |")
    note = ("\nMedian forward latency in ms (and % over the base model), jitted, variants "
            f"interleaved in {rows[0]['config']['rounds']} rounds of "
            f"{rows[0]['config']['reps']} calls. LoRA r=8 on query,value; adapters of size 64.")
    return "\n".join(lines) + "\n" + note + machine_line(rows[-1])


def peer_table() -> str:
    rows = list(latest([r for r in records("peer.jsonl", "peer") if r["machine"].get("isa")],
                       lambda r: (cpu(r), r["config"]["seq"])).values())  # ISA: since 12-01
    if not rows:
        return ""
    lines = ["| CPU | T | PEFT LoRA ms | lora_jax LoRA ms | ours / PEFT | PEFT full ms | "
             "lora_jax full ms | ours / PEFT | LoRA / full (ours) | LoRA / full (PEFT) | "
             "measured |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["time"][:10], cpu(r), r["config"]["seq"])):
        m = r["median_step_ms"]
        lines.append(
            f"| {cpu(r)} | {r['config']['seq']} | {m['peft_lora']:.0f} | {m['jax_lora']:.0f} | "
            f"{r['jax_over_peft_lora']:.2f} | {m['peft_full']:.0f} | {m['jax_full']:.0f} | "
            f"{r['jax_over_peft_full']:.2f} | {r['lora_over_full_jax']:.2f} | "
            f"{r['lora_over_full_peft']:.2f} | {r['time'][:10]}, "
            f"{r['config']['rounds']} rounds |")
    # each row names its CPU, date and rounds: one machine line would speak for one row only
    versions = sorted({f"jax {r['machine']['jax']}, flax {r['machine']['flax']}, "
                       f"optax {r['machine']['optax']}" for r in rows})
    steps = sorted({r["config"]["steps"] for r in rows})
    note = (f"\nBatch 32, MiniLM, PEFT eager (torch CPU), each configuration in its own process, "
            f"alternating in rounds of {' or '.join(map(str, steps))} timed steps; ratios are "
            "medians of per-round ratios; the latest run on each CPU; "
            f"{'; '.join(versions)}.\n")
    return "\n".join(lines) + "\n" + note


def main() -> None:
    for name, table in (("train_step.md", train_step_table()), ("latency.md", latency_table()),
                        ("peer.md", peer_table())):
        if table:
            atomic_write(RESULTS / name, lambda tmp, t=table: Path(tmp).write_text(t))
            print(f"## {name}\n\n{table}")


if __name__ == "__main__":
    main()
