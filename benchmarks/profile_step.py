"""Where a train step's time goes: XLA's own trace of the compiled step, per HLO op.

Runs ``--steps`` train steps (batch 32, MiniLM, dropout off: the peer benchmark's step) under
``jax.profiler``, reads the trace back with ``jax.profiler.ProfileData``, and joins each traced
op (a thunk of XLA's CPU runtime, named like the instruction in the compiled HLO) with that
instruction: its kind, its output shape and, for ops that contain a dot, the dot's FLOPs.
Ops fall in four groups:

- ``dot``: fusions around a ``dot`` (XNNPACK's ``ynn_fusion``, XLA's own dot emitter);
- ``batched dot``: the same with batch dimensions (attention's ``QK^T`` and ``PV``);
- ``elementwise``: loop/input fusions (GELU, LayerNorm, softmax, AdamW, their gradients);
- ``data movement``: copies, transposes, broadcasts, gathers and scatters outside fusions;
- ``other``.

Busy time is summed over XLA's worker threads, so a group's share is of the threads' busy time,
not of the wall clock; the wall-clock step time is measured separately, without the profiler,
and so is the machine's f32 matmul peak (2048^3), against which the step's dot FLOPs per
wall-clock second are reported.

    python benchmarks/profile_step.py --mode lora --seq 64
"""

from __future__ import annotations

import argparse
import collections
import math
import re
import statistics
import tempfile
from pathlib import Path

import jax
from common import (
    RESULTS,
    block,
    described,
    emit,
    header,
    make_state,
    matmul_peak_gflops,
    synthetic_batch,
    timed,
)

from lora_jax import load_pretrained, train_step

_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+) (\w[\w\-]*)\(")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_SHAPE = re.compile(r"[a-z]\w*\[([\d,]*)\]")
_DOT = re.compile(r"= (\S+) dot\(%([\w.\-]+), %([\w.\-]+)\)(.*)")


def _dims(shape: str) -> list[int]:
    m = _SHAPE.search(shape)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def dot_flops(line: str, shapes: dict[str, str]) -> int:
    """2 x output elements x contracted size, for one HLO ``dot`` instruction line (``shapes``:
    the shapes of the instructions of its computation, by name)."""
    m = _DOT.search(line)
    if m is None:
        return 0
    out, lhs, attrs = _dims(m.group(1)), _dims(shapes[m.group(2)]), m.group(4)
    c = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attrs)
    contracted = [lhs[int(i)] for i in c.group(1).split(",") if i] if c else []
    return 2 * math.prod(out) * math.prod(contracted)


def parse_hlo(text: str) -> dict[str, dict]:
    """Every instruction of the compiled module: opcode, output shape, dot FLOPs inside."""
    comps: dict[str, list[str]] = {}
    current = entry = None
    for line in text.splitlines():
        head = re.match(r"^(ENTRY )?%([\w.\-]+) ", line)
        if head and line.rstrip().endswith("{"):
            current = head.group(2)
            entry = current if head.group(1) else entry
            comps[current] = []
        elif current is not None and line.strip() and line.strip() != "}":
            comps[current].append(line)

    shapes = {c: {m.group(1): m.group(2) for m in map(_INSTR.match, lines) if m}
              for c, lines in comps.items()}

    def dots_in(comp: str, seen=()) -> tuple[int, bool]:
        """FLOPs of every dot reached from ``comp``, and whether any has batch dimensions."""
        total, batched = 0, False
        for line in comps.get(comp, []):
            if " dot(" in line:
                total += dot_flops(line, shapes[comp])
                batched |= "lhs_batch_dims" in line
            for callee in _CALLS.findall(line):
                if callee not in seen:
                    f, b = dots_in(callee, (*seen, comp))
                    total, batched = total + f, batched or b
        return total, batched

    out = {}
    for comp, lines in comps.items():
        for line in lines:
            m = _INSTR.match(line)
            if not m:
                continue
            name, shape, opcode = m.groups()
            callee = _CALLS.search(line)
            if opcode == "dot":
                flops, batched = dot_flops(line, shapes[comp]), "lhs_batch_dims" in line
            else:
                flops, batched = dots_in(callee.group(1)) if callee else (0, False)
            op = re.search(r'op_name="([^"]+)"', line)
            out[name] = {"opcode": opcode, "shape": shape, "flops": flops, "batched": batched,
                         "entry": comp == entry, "source": op.group(1) if op else ""}
    return out


def group(info: dict | None) -> str:
    if info is None:
        return "other"
    if info["flops"]:
        return "batched dot" if info["batched"] else "dot"
    if info["opcode"] == "fusion":
        return "elementwise"
    if info["opcode"] in ("copy", "transpose", "broadcast", "gather", "scatter",
                          "dynamic-slice", "dynamic-update-slice", "concatenate", "slice"):
        return "data movement"
    return "other"


def where(source: str) -> str:
    """An op's place in the step, the same for every layer: ``backward: intermediate/erfc``."""
    direction = ("backward" if "transpose(" in source else "forward" if "jvp(" in source
                 else "optimizer")
    path = re.sub(r"\w+\(|\)", "", source).split("/")
    if "layer" in path:
        path = path[path.index("layer") + 2:]
    elif "train_step" in path:
        path = path[path.index("train_step") + 1:]
    return f"{direction}: {'/'.join(path[-4:])}"


def trace_ops(fn, steps: int) -> dict[str, float]:
    """Busy nanoseconds per traced op name over ``steps`` calls of ``fn``."""
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp)
        for _ in range(steps):
            block(fn())
        jax.profiler.stop_trace()
        (pb,) = Path(tmp).rglob("*.xplane.pb")
        data = jax.profiler.ProfileData.from_file(str(pb))
    busy: collections.Counter = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if not line.name.startswith(("tf_XLAEigen", "tf_XLAPjRtCpuClient")):
                continue
            for ev in line.events:
                if not ev.name.startswith(("ThunkExecutor", "SlinkyThreadPool")):
                    busy[ev.name] += ev.duration_ns
    return busy


def main() -> None:
    p = argparse.ArgumentParser(description=described(__doc__))
    p.add_argument("--mode", choices=["lora", "full"], default="lora")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="traced steps")
    p.add_argument("--top", type=int, default=25, help="ops listed by name")
    p.add_argument("--hlo-out", help="also write the compiled step's HLO text here")
    p.add_argument("--out", default=str(RESULTS / "profile.jsonl"))
    args = p.parse_args()
    pre = load_pretrained("minilm")
    holder = [make_state(pre, args.mode)]
    batch = synthetic_batch(args.batch, args.seq)
    # one compile: the steps below run this executable, so every traced op is one of its
    # instructions (calling ``train_step`` itself would compile the same program again)
    compiled = train_step.lower(holder[0], batch).compile()
    text = compiled.as_text()
    if args.hlo_out:
        Path(args.hlo_out).write_text(text)
    hlo = parse_hlo(text)

    def step():
        holder[0], metrics = compiled(holder[0], batch)
        return metrics["loss"]

    timed(step, 3)  # warm up
    wall = statistics.median(timed(step, args.steps))
    busy = trace_ops(step, args.steps)
    peak = matmul_peak_gflops()
    per_step = {k: v / 1e6 / args.steps for k, v in busy.items()}
    total = sum(per_step.values())
    groups: collections.Counter = collections.Counter()
    places: collections.Counter = collections.Counter()
    for name, ms in per_step.items():
        info = hlo.get(name)
        groups[group(info)] += ms
        places[f"{group(info)} | {where(info['source']) if info else name}"] += ms
    dot_flops_step = sum(i["flops"] for i in hlo.values()
                         if i["entry"] and group(i).endswith("dot"))
    dot_ms = groups["dot"] + groups["batched dot"]
    top = []
    for name, ms in sorted(per_step.items(), key=lambda kv: -kv[1])[: args.top]:
        info = hlo.get(name, {})
        flops = info.get("flops", 0)
        top.append({"op": name, "group": group(info or None), "busy_ms": round(ms, 2),
                    "share": round(ms / total, 4), "shape": info.get("shape", ""),
                    "gflop_s": round(flops / (ms / 1000) / 1e9, 1) if flops and ms else None,
                    "source": info.get("source", "").removeprefix("jit(train_step)/")})
    emit({**header("profile", {"mode": args.mode, "batch": args.batch, "seq": args.seq,
                               "steps": args.steps}),
          "wall_step_ms": wall, "busy_ms_per_step": round(total, 1),
          "group_ms": {k: round(v, 1) for k, v in groups.most_common()},
          "group_share": {k: round(v / total, 3) for k, v in groups.most_common()},
          "dot_gflop_per_step": round(dot_flops_step / 1e9, 2),
          "dot_gflop_s_busy": round(dot_flops_step / (dot_ms / 1000) / 1e9, 1),
          # the whole step's dot FLOPs over its wall time, against the same run's 2048^3 peak
          "step_gflop_s": round(dot_flops_step / (wall / 1000) / 1e9, 1),
          "matmul_peak_gflop_s": round(peak, 1),
          "places": [{"place": k, "busy_ms": round(v, 2), "share": round(v / total, 4)}
                     for k, v in places.most_common(args.top)],
          "top": top}, args.out)


if __name__ == "__main__":
    main()
