"""The fair-comparison protocol (``benchmarks/fair.py``) on the tiny model: the grid comes
first, the rate is chosen on seed 0, seeds follow at that rate, finished cells are never
trained again, an interrupted cell resumes, and the paired interval is Student's t."""

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fair  # noqa: E402

GRID = {"lora": (1e-3, 3e-3), "full": (1e-4,)}
EXTEND = {}  # (the search past the grid's ends: test_the_search_steps_past_a_winning_edge)
EPOCHS = {"sst2": 2}


def tiny_run(tmp, tiny_base, tiny_glue, **kw):
    return fair.run(["sst2"], ["lora", "full"], [0, 1], root=tmp / "results",
                    runs=tmp / "runs", data_dir=str(tiny_glue), grid=GRID, extend=EXTEND,
                    epochs=EPOCHS,
                    model=str(tiny_base), batch_size=16, max_length=16, **kw)


@pytest.mark.slow
def test_protocol_grid_then_seeds_at_the_chosen_rate(tiny_base, tiny_glue, tmp_path):
    done = tiny_run(tmp_path, tiny_base, tiny_glue)
    keys = [(r["method"], r["lr"], r["seed"]) for r in done]
    cells = fair.load_cells(tmp_path / "results")
    lora_lr = fair.chosen_lr(cells, "sst2", "lora", GRID["lora"], None)
    assert keys == [("lora", 1e-3, 0), ("lora", 3e-3, 0), ("full", 1e-4, 0),
                    ("lora", lora_lr, 1), ("full", 1e-4, 1)]
    best = {lr: cells[("sst2", "lora", lr, 0)]["best"]["score"] for lr in GRID["lora"]}
    assert best[lora_lr] == max(best.values())
    record = cells[("sst2", "lora", lora_lr, 1)]
    assert [c["epoch"] for c in record["curve"]] == [1, 2]
    assert 0 < record["curve"][0]["wall_s"] < record["curve"][1]["wall_s"]
    assert record["cost"]["trainable_params_without_head"] == 2 * 2 * 2 * 32 * 8
    assert record["commit"] and record["config"]["learning_rate"] == lora_lr
    assert tiny_run(tmp_path, tiny_base, tiny_glue) == []  # everything kept: nothing to train

    costs = tmp_path / "costs.jsonl"
    summary = fair.report(["sst2"], ["lora", "full"], root=tmp_path / "results",
                          out=tmp_path, grid=GRID, extend=EXTEND, costs_file=costs)["tasks"]["sst2"]
    assert "idle" not in summary["methods"]["lora"]
    assert "| not measured | - |" in (tmp_path / "fair.md").read_text()
    diffs = [cells[("sst2", "lora", lora_lr, s)]["best"]["score"]
             - cells[("sst2", "full", 1e-4, s)]["best"]["score"] for s in (0, 1)]
    d = summary["lora_minus_full"]
    assert d["n"] == 2 and math.isclose(d["mean"], sum(diffs) / 2)
    half = 12.706 * abs(diffs[0] - diffs[1]) / math.sqrt(2) / math.sqrt(2)  # t(1) * sd / sqrt(n)
    assert math.isclose(d["high"] - d["mean"], half, rel_tol=1e-9, abs_tol=1e-12)
    md = (tmp_path / "fair.md").read_text()
    assert "| SST-2 | lora |" in md and "95 % interval" in md
    assert (tmp_path / "figures" / "fair_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "fair.json").read_text())["tasks"]["sst2"]["methods"]["lora"][
        "lr"] == lora_lr

    # the speed columns come from an idle measurement of each method, not from the cells
    timed = fair.costs(["sst2"], ["lora", "full"], root=tmp_path / "results", out=costs,
                       data_dir=str(tiny_glue), batches=2, rounds=2)
    assert [(r["task"], r["variant"]) for r in timed] == [("sst2", "lora"), ("sst2", "full")]
    for r in timed:
        assert r["examples"] == 2 * 16 and len(r["round_seconds"]) == 2
        assert math.isclose(r["examples_per_s"], 32 / statistics.median(r["round_seconds"]))
    assert len(costs.read_text().splitlines()) == 2
    lora = fair.report(["sst2"], ["lora", "full"], root=tmp_path / "results", out=tmp_path,
                       grid=GRID, extend=EXTEND, costs_file=costs)["tasks"]["sst2"]["methods"][
        "lora"]
    steps = sorted(cells[("sst2", "lora", lora_lr, s)]["best"]["step"] for s in (0, 1))
    assert math.isclose(lora["idle"]["s_to_best"], sum(steps) / 2 * timed[0]["step_ms"] / 1e3)
    assert f"| {timed[0]['examples_per_s']:.0f} | {lora['idle']['s_to_best']:.0f} |" in (
        tmp_path / "fair.md").read_text()


@pytest.mark.slow
def test_an_interrupted_cell_resumes_its_run(tiny_base, tiny_glue, tmp_path, monkeypatch):
    calls = []
    real_fit = fair.fit

    def cut_short(cfg, run_dir, **kw):  # the first attempt dies after its first epoch
        calls.append(kw["resume"])
        if len(calls) == 1:
            def die(record):
                kw["on_epoch"](record)
                raise KeyboardInterrupt
            return real_fit(cfg, run_dir, **{**kw, "on_epoch": die})
        return real_fit(cfg, run_dir, **kw)

    monkeypatch.setattr(fair, "fit", cut_short)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(tmp_path, tiny_base, tiny_glue, limit=1)
    assert fair.load_cells(tmp_path / "results") == {}  # no record of an unfinished cell
    (record,) = tiny_run(tmp_path, tiny_base, tiny_glue, limit=1)
    assert calls == [False, True] and record["resumed"]
    assert [c["epoch"] for c in record["curve"]] == [1, 2]
    assert record["curve"][0]["wall_s"] < record["curve"][1]["wall_s"]  # clock kept across


def test_paired_interval_and_noise_verdict():
    d = fair.paired([0.01, 0.03, 0.02])
    assert math.isclose(d["mean"], 0.02)
    assert math.isclose(d["high"] - d["mean"], 4.303 * 0.01 / math.sqrt(3))
    assert d["noise"] is True  # [-0.005, 0.045] holds 0: three seeds cannot tell
    assert fair.paired([0.05, 0.06, 0.055])["noise"] is False  # [0.043, 0.067]
    assert fair.paired([0.01])["noise"] is None  # one seed: no interval


@pytest.mark.parametrize("report", list(fair.REPORTS))
def test_committed_fair_tables_match_the_committed_cells(report):
    """Each committed report (results/fair.md, results/after_lora/, ...) covers the tasks and
    methods ``REPORTS`` names for it, and is what the report makes of results/fair/ and the idle
    costs (no hand-edited numbers)."""
    root, out = fair.RESULTS / "fair", fair.RESULTS / report
    if not (root.is_dir() and (out / "fair.json").is_file()):
        pytest.skip(f"no {out / 'fair.json'} committed yet")
    record = json.loads((out / "fair.json").read_text())
    tasks = list(record["tasks"])
    methods = list(next(iter(record["tasks"].values()))["methods"])
    assert (tuple(tasks), tuple(methods)) == fair.REPORTS[report]  # `report --all` renders it
    cells = fair.report_cells(root, tasks, methods)
    summary = fair.summarize(cells, tasks, methods, idle=fair.load_costs())
    assert (out / "fair.md").read_text() == fair.markdown(summary, methods)
    plain = json.loads(json.dumps(fair._no_nan(summary)))
    assert record["answer"] == fair.verdict(plain)
    assert record["verdicts"] == {f"{a} - {b}": fair.verdict(plain, a, b)
                                  for a, b in fair.contrasts(methods) if (a, b) != ("lora", "full")}
    # README, deck and notebook 06 list them as stored: each against what it changes, then vs full
    keys = list(record["verdicts"])
    assert keys == sorted(keys, key=lambda c: c.endswith(" - full"))
    # every CPU the report's own cells ran on, not the first cell's; their commits only
    assert all(k[0] in tasks and k[1] in methods for k in cells)
    assert record["commits"] == sorted({c["commit"] for c in cells.values()})
    assert record["machines"] == sorted({fair.cpu_label(c["machine"]) for c in cells.values()})
    for figure in ("fair_curves.png", "fair_compare.png"):
        assert (out / "figures" / figure).is_file()


def test_report_all_writes_every_report_in_its_folder(tmp_path):
    """``report --all`` renders each report of ``REPORTS`` with its own tasks and methods,
    from whatever cells exist (none here: every task says it is not measured yet)."""
    (tmp_path / "cells").mkdir()
    records = fair.report_all(root=tmp_path / "cells", out=tmp_path / "out",
                              costs_file=tmp_path / "no_costs.jsonl")
    assert list(records) == list(fair.REPORTS)
    for name, (tasks, methods) in fair.REPORTS.items():
        stored = json.loads((tmp_path / "out" / name / "fair.json").read_text())
        assert list(stored["tasks"]) == list(tasks)
        assert list(stored["tasks"][tasks[0]]["methods"]) == list(methods)
        assert stored["answer"]["complete"] is False
    assert set(fair.LEVERS) <= set(fair.REPORTS)
    # the levers' words, listed as README, deck and notebook 06 show them (vs LoRA, then full)
    verdicts = fair.lever_verdicts(tmp_path / "out")
    assert list(verdicts) == ["lora-r16 - lora", "lora-r16 - full", "lora-all - lora",
                              "lora-all - full", "lora-long - lora", "lora-long - full"]
    md = fair.verdicts_markdown(verdicts).splitlines()
    first = verdicts["lora-r16 - lora"]
    assert md[0] == f"- **{first['label']}**: {first['overall']}"
    assert md[1:5] == [f"  - {line}" for line in first["tasks"].values()]  # RTE, MRPC, STS-B, SST-2


def test_the_gap_answer_reads_each_lever_where_loras_gap_is_real():
    def d(mean, low, high, n=3):
        noise = None if low is None else low <= 0 <= high  # one seed: no interval
        return {"n": n, "mean": mean, "low": low, "high": high, "noise": noise}

    methods = {"lora": {}, "full": {}, "lora-long": {}}
    epochs = {"tasks": {
        "rte": {"methods": methods, "differences": {"lora - full": d(-0.01, -0.05, 0.03),
                                                    "lora-long - full": d(-0.09, -0.1, -0.08)}},
        "sst2": {"methods": methods, "differences": {"lora - full": d(-0.015, -0.02, -0.01),
                                                     "lora-long - full": d(-0.004, -0.01, 0.002)}},
        "stsb": {"methods": methods, "differences": {"lora - full": d(-0.011, -0.013, -0.009),
                                                     "lora-long - full": d(-0.02, None, None, 1)}}}}
    layers = {"tasks": {"rte": {"methods": {"lora": {}, "full": {}, "lora-all": {}},
                                "differences": {"lora - full": d(-0.01, -0.05, 0.03)}}}}
    lines = fair.gap_answer([epochs, layers]).splitlines()
    # RTE's gap is within noise, so the lever's RTE shortfall is not read as a gap it left open
    assert lines[0] == ("- **LoRA for twice the epochs**: SST-2 closes it, -0.4 [-1.0, +0.2] "
                        "(LoRA -1.5 [-2.0, -1.0]); STS-B not measured with 3 seeds yet "
                        "(LoRA -1.1 [-1.3, -0.9]).")
    assert lines[1].startswith("- **LoRA on every block layer**: ran on RTE, where LoRA is within")
    below = {**epochs["tasks"]["sst2"]["differences"], "lora-long - full": d(-0.01, -0.02, -0.005)}
    epochs["tasks"]["sst2"]["differences"] = below
    assert "SST-2 still below, -1.0 [-2.0, -0.5]" in fair.gap_answer([epochs])


def test_the_search_steps_past_a_winning_edge():
    """A best rate at an end of the grid makes the rate one step beyond it due; the choice is
    then the best of all tried, and seeds wait for it."""
    def cell(score):
        return {"best": {"score": score}}

    grid, ext = (1e-4, 3e-4, 1e-3), (3e-5, 3e-3)
    cells = {("rte", "lora", 1e-4, 0): cell(0.60), ("rte", "lora", 3e-4, 0): cell(0.58)}
    assert fair.next_rate(cells, "rte", "lora", grid, ext) == 1e-3  # the grid first
    cells[("rte", "lora", 1e-3, 0)] = cell(0.55)
    assert fair.next_rate(cells, "rte", "lora", grid, ext) == 3e-5  # best at the low edge
    assert fair.chosen_lr(cells, "rte", "lora", grid, ext) is None
    assert fair.plan(cells, ["rte"], ["lora"], [0, 1], {"lora": grid}, {"lora": ext}) == [
        ("rte", "lora", 3e-5, 0)]
    cells[("rte", "lora", 3e-5, 0)] = cell(0.59)
    assert fair.next_rate(cells, "rte", "lora", grid, ext) is None  # one step only
    assert fair.chosen_lr(cells, "rte", "lora", grid, ext) == 1e-4
    assert fair.tried(cells, "rte", "lora", grid, ext) == [3e-5, 1e-4, 3e-4, 1e-3]
    assert fair.plan(cells, ["rte"], ["lora"], [0, 1], {"lora": grid}, {"lora": ext}) == [
        ("rte", "lora", 1e-4, 1)]
    inner = {k: v for k, v in cells.items() if k[2] != 3e-5}
    inner[("rte", "lora", 3e-4, 0)] = cell(0.70)  # best inside the grid: no step beyond
    assert fair.chosen_lr(inner, "rte", "lora", grid, ext) == 3e-4


def test_seeds_are_planned_pair_by_pair():
    """Seed 1 of both methods before seed 2 of either, so paired differences fill in early."""
    cells = {("rte", m, lr, 0): {"best": {"score": 0.6}} for m, lr in (("lora", 1e-3),
                                                                        ("full", 1e-4))}
    todo = fair.plan(cells, ["rte"], ["lora", "full"], [0, 1, 2],
                     {"lora": (1e-3,), "full": (1e-4,)}, {})
    assert todo == [("rte", "lora", 1e-3, 1), ("rte", "full", 1e-4, 1),
                    ("rte", "lora", 1e-3, 2), ("rte", "full", 1e-4, 2)]


def _pair(mean, low, high, n):
    return {"n": n, "mean": mean, "low": low, "high": high,
            "noise": None if n < 2 else low <= 0 <= high}


def test_the_answer_is_told_only_from_tasks_with_three_seeds():
    def task(d):
        return {"methods": {}, "differences": {} if d is None else {"lora - full": d}}

    summary = {"rte": task(_pair(-0.02, -0.18, 0.14, 2)), "mrpc": task(None),
               "stsb": task(_pair(-0.01, -0.03, 0.01, 3)),
               "cola": task(_pair(-0.05, -0.08, -0.02, 3)), "sst2": task(_pair(0.01, 0, 0, 1))}
    v = fair.verdict(summary)
    assert not v["complete"]
    assert v["tasks"]["rte"] == ("RTE: within seed noise: LoRA − full fine-tuning = -2.0 points, "
                                 "95 % interval [-18.0, +14.0], 2 of 3 seeds so far")
    assert v["tasks"]["mrpc"] == "MRPC: not measured yet"
    assert v["tasks"]["cola"].startswith("CoLA: LoRA below full fine-tuning: ")
    assert v["tasks"]["sst2"].endswith("from 1 seed (no interval yet)")
    assert v["overall"] == ("On 2 of 5 tasks measured with 3+ seeds, LoRA − full fine-tuning "
                            "averages -3.0 points; within seed noise on 1 (STS-B), below on 1 "
                            "(CoLA), above on 0 (none). Still to measure: RTE, MRPC, SST-2.")
    # the same sorting, as fields for readers that word the answer their own way
    assert (v["noise"], v["below"], v["above"]) == (["stsb"], ["cola"], [])
    assert v["missing"] == ["rte", "mrpc", "sst2"]
    empty = fair.verdict({"rte": task(None)})
    assert empty["overall"].startswith("Not answered yet") and not empty["complete"]
    # a lever is answered the same way from its own contrast, in its own words
    summary["rte"]["differences"]["lora-r16 - lora"] = _pair(0.03, 0.01, 0.05, 3)
    lever = fair.verdict(summary, "lora-r16", "lora")
    assert lever["label"] == "LoRA at r = 16 − LoRA"
    assert lever["tasks"]["rte"].startswith("RTE: LoRA at r = 16 above LoRA: ")
    assert lever["overall"].startswith("On 1 of 5 tasks") and "above on 1 (RTE)" in lever["overall"]


def test_variants_change_only_what_they_name():
    lora = fair.base_config("rte", "lora", 2e-4, 0, fair.EPOCHS)
    every = fair.base_config("rte", "lora-all", 2e-4, 0, fair.EPOCHS)
    r16 = fair.base_config("rte", "lora-r16", 2e-4, 0, fair.EPOCHS)
    assert (lora.method, lora.rank, lora.alpha, lora.targets) == ("lora", 8, 16.0,
                                                                  ("query", "value"))
    assert every.targets == fair.BLOCK_TARGETS and every.rank == 8
    assert (r16.rank, r16.alpha / r16.rank, r16.targets) == (16, 2.0, ("query", "value"))
    for task in ("sst2", "rte"):  # the optimisation lever: the task's epochs doubled, nothing else
        long = fair.base_config(task, "lora-long", 2e-4, 0, fair.EPOCHS)
        base = fair.base_config(task, "lora", 2e-4, 0, fair.EPOCHS)
        assert long.epochs == 2 * base.epochs == 2 * fair.EPOCHS[task]
        assert long.to_json() == {**base.to_json(), "epochs": long.epochs}
    assert fair.base_config("rte", "bitfit", 1e-3, 0, fair.EPOCHS).method == "bitfit"
    assert set(fair.GRID) == set(fair.EXTEND) == set(fair.VARIANTS)
    dora, plus, pissa = (fair.base_config("rte", v, 2e-4, 0, fair.EPOCHS)
                         for v in ("dora", "loraplus", "pissa"))
    for cfg in (dora, plus, pissa):  # the descendants change one thing of "lora" each
        assert (cfg.rank, cfg.alpha, cfg.targets) == (8, 16.0, ("query", "value"))
    assert (dora.method, plus.loraplus_ratio, pissa.lora_init) == ("dora", 16.0, "pissa")
    r64, rs64 = (fair.base_config("rte", v, 2e-4, 0, fair.EPOCHS)
                 for v in ("lora-r64", "rslora-r64"))
    assert (r64.lora_config().scale, rs64.lora_config().scale) == (0.25, 2.0)
    with pytest.raises(ValueError, match="unknown variant 'lora-xl'; known: lora, full"):
        fair.base_config("rte", "lora-xl", 2e-4, 0, fair.EPOCHS)


def test_contrasts_and_cells_without_a_variant(tmp_path):
    assert fair.contrasts(["lora", "full", "lora-all"]) == [
        ("lora", "full"), ("lora-all", "full"), ("lora-all", "lora")]
    assert fair.contrasts(["lora", "full", "dora", "lora-r64", "rslora-r64"]) == [
        ("lora", "full"), ("dora", "full"), ("lora-r64", "full"), ("rslora-r64", "full"),
        ("lora-r64", "lora"), ("dora", "lora"), ("rslora-r64", "lora-r64")]
    (tmp_path / "rte").mkdir()
    old = {"task": "rte", "method": "lora", "lr": 2e-4, "seed": 0}  # written before variants
    new = {**old, "method": "lora", "variant": "lora-all"}
    (tmp_path / "rte" / "a.json").write_text(json.dumps(old))
    (tmp_path / "rte" / "b.json").write_text(json.dumps(new))
    assert sorted(fair.load_cells(tmp_path)) == [("rte", "lora", 2e-4, 0),
                                                 ("rte", "lora-all", 2e-4, 0)]


def test_the_demo_note_sets_one_seed_beside_the_measured_spread():
    demo = {"task": "sst2", "config": {"epochs": 2},
            "rows": [{"method": "full", "best": 0.859}, {"method": "lora", "best": 0.837}]}
    rte = {"n": 2, "mean": -0.02, "sd": 0.011, "low": -0.18, "high": 0.14, "noise": True}
    record = {"answer": {"overall": "Not answered yet."},
              "tasks": {"rte": {"differences": {"lora - full": rte}}, "sst2": {}}}
    note = fair.demo_note(demo, record).splitlines()
    assert note[0] == ("This demo: LoRA − full fine-tuning = -2.2 points on SST-2, from one seed "
                       "at the default learning rates and 2 epochs.")
    assert "has not measured SST-2 yet" in note[1] and "RTE 1.1" in note[1]
    assert note[2].startswith("The study so far: Not answered yet.")
    record["tasks"]["sst2"] = {"differences": {"lora - full": {**rte, "n": 3}}}
    assert "The fair comparison on SST-2 (tuned rates, 3 seeds): -2.0 points, 95 % interval " \
           "[-18.0, +14.0]; one seed's difference varies by 1.1 points" in fair.demo_note(
               demo, record)
    assert fair.demo_note({**demo, "rows": demo["rows"][:1]}, record) == ""  # no pair: silent
    # the committed study can always be read by the demo
    committed = json.loads((fair.RESULTS / "fair.json").read_text())
    assert fair.demo_note(demo, committed).startswith("This demo:")


def test_the_device_script_parses_and_refuses_without_its_pack(tmp_path):
    import subprocess

    script = fair.RESULTS.parent / "benchmarks" / "device_glue.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    bad = subprocess.run(["bash", str(script), "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_the_descendants_cost_benchmark_measures_each_variant():
    """``benchmarks/after_lora.py`` on a tiny batch: every variant's counts are the library's
    (DoRA: one magnitude per adapted output; PiSSA's file: rank 2r), and each step is timed."""
    import after_lora
    from common import synthetic_batch

    from lora_jax import load_pretrained

    pre = load_pretrained("minilm")
    rec = after_lora.step_times(pre, ("lora", "dora", "pissa"), synthetic_batch(2, 8), 1, 1)
    assert rec["dora"]["trainable_params_without_head"] == (
        rec["lora"]["trainable_params_without_head"] + 12 * 384)
    assert rec["pissa"]["adapter_file_bytes"] > 1.9 * rec["lora"]["adapter_file_bytes"]
    assert rec["pissa"]["optimizer_state_bytes"] == rec["lora"]["optimizer_state_bytes"]
    assert all(r["step_ms_median"] > 0 for r in rec.values())
    rows = after_lora.latency(pre, [1], 8, 1, 1)
    assert {r["variant"] for r in rows} == {"base", "lora_merged", "lora_unmerged",
                                            "dora_merged", "dora_unmerged"}


def test_every_result_records_the_cpus_vector_isa(monkeypatch):
    from lora_jax.compare import machine_info, vector_isa

    assert vector_isa({"sse2", "avx", "avx2", "avx512f", "avx512bw"}) == "AVX-512"
    assert vector_isa({"sse2", "avx", "avx2", "fma"}) == "AVX2"
    assert vector_isa({"neon"}) == "other"
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX2 --xla_cpu_enable_fast_math=false")
    info = machine_info()
    assert info["isa"] in ("AVX-512", "AVX2", "other") and info["xla_max_isa"] == "AVX2"


def test_a_choice_beyond_the_grid_is_marked_as_an_edge():
    """The step beyond the grid that beats the grid is the lowest rate tried: the table marks
    it, since the best rate may lie further out; a choice inside the range is not marked."""
    def cell(score):
        return {"best": {"score": score, "epoch": 3, "step": 30}, "final": {"score": score},
                "cost": {"trainable_params": 10, "trainable_params_without_head": 8,
                         "optimizer_state_bytes": 80, "step_memory_bytes": 10**9}}

    grid, ext = (1e-4, 3e-4, 1e-3), (3e-5, 3e-3)
    cells = {("rte", "lora", lr, 0): cell(s) for lr, s in
             ((1e-4, 0.60), (3e-4, 0.58), (1e-3, 0.55), (3e-5, 0.62))}
    cells.update({("rte", "full", lr, 0): cell(s) for lr, s in
                  ((1e-4, 0.50), (3e-4, 0.58), (1e-3, 0.55))})
    grids, exts = {"lora": grid, "full": grid}, {"lora": ext, "full": ext}
    summary = fair.summarize(cells, ["rte"], ["lora", "full"], grids, exts)
    assert summary["rte"]["methods"]["lora"]["edge"] is True
    assert summary["rte"]["methods"]["full"]["edge"] is False
    md = fair.markdown(summary, ["lora", "full"])
    assert "| RTE | lora | 3e-05: 62.0, 0.0001: 60.0, 0.0003: 58.0, 0.001: 55.0 | 3e-05 (edge) |" \
        in md
    assert "| 0.0003 (edge)" not in md and "further out (RTE LoRA)." in md
    assert (summary["rte"]["methods"]["lora"]["rate"], summary["rte"]["methods"]["full"]["rate"]
            ) == ("3e-05 (edge)", "0.0003")
    assert fair.edge_note(summary) in md  # the one footnote, word for word
    inside = {k: v for k, v in cells.items() if k[1] == "full"}
    assert fair.edge_note(fair.summarize(inside, ["rte"], ["full"], grids, exts)) == ""
