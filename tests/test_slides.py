"""The lecture deck: every figure it shows exists, every generated table matches results/,
every Python block runs."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DECK = ROOT / "slides" / "lora.md"


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("slides_build", ROOT / "slides" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slides() -> list[str]:
    text = DECK.read_text(encoding="utf-8")
    body = text.split("\n---\n", 1)[1]  # after the front matter
    return [s for s in re.split(r"\n---\n", body) if s.strip()]


def test_every_image_the_deck_shows_exists():
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", DECK.read_text(encoding="utf-8"))
    assert len(images) >= 8
    missing = [p for p in images if not (DECK.parent / p).is_file()]
    assert not missing, f"{DECK.name} shows images that do not exist: {missing}"


def test_generated_tables_are_in_sync_with_the_results(build):
    text = DECK.read_text(encoding="utf-8")
    readme = build.README.read_text(encoding="utf-8")
    names = {m["name"] for doc in (text, readme) for m in build.BLOCK.finditer(doc)}
    assert sorted(names) == sorted(build.BLOCKS), "every generator used (deck or README)"
    assert build.render(text) == text, "run: python slides/build.py"


def test_an_edited_number_is_caught(build):
    text = DECK.read_text(encoding="utf-8")
    tampered = text.replace("| lora |", "| lora | 99.9 |", 1)
    assert tampered != text and build.render(tampered) != tampered


def test_an_unknown_block_is_an_error(build):
    with pytest.raises(KeyError, match="nope"):
        build.render("<!-- generated:nope -->\nx\n<!-- /generated:nope -->")


def test_deck_size_and_speaker_notes():
    deck = slides()
    assert 20 <= len(deck) <= 30, len(deck)
    marker = re.compile(r"<!--\s*(/?generated:|_class:)")
    for s in deck:
        notes = [c for c in re.findall(r"<!--(.*?)-->", s, re.S) if not marker.match(f"<!--{c}")]
        assert notes, f"slide without speaker notes: {s.strip().splitlines()[0]}"


def code_blocks(lang: str) -> list[tuple[str, str]]:
    """``(slide title, code)`` for every fenced ``lang`` block of the deck, in order."""
    out = []
    for s in slides():
        title = next((ln.lstrip("# ") for ln in s.splitlines() if ln.startswith("#")), "?")
        out += [(title, code) for code in re.findall(rf"```{lang}\n(.*?)```", s, flags=re.S)]
    return out


def run_block(i: int, title: str, code: str) -> dict:
    """Execute one block as a student pasting it would, in a namespace of its own; the
    traceback of a failure names the slide."""
    namespace = {"__name__": "__main__"}
    exec(compile(code, f"{DECK.name}[python block {i}: {title}]", "exec"), namespace)
    return namespace


def test_a_block_that_raises_fails_the_run():
    with pytest.raises(NameError, match="variables"):
        run_block(0, "broken", "from lora_jax import merge\nmerged = merge(variables, None)\n")


def test_every_python_block_in_the_deck_runs(tiny_base, tiny_glue, tmp_path, monkeypatch):
    """Every ```python block of slides/lora.md runs, top to bottom, offline, in about 25 s
    on 2 busy cores.

    One namespace per block: the blocks sit on slides far apart (the optax slide in the
    method part, "Using lora_jax" at the end) and each is what a student copies from one
    slide, so each must import and define all it uses; a name left over from an earlier
    block would hide exactly the bug this test is for (the undefined ``variables``).

    The "Using lora_jax" block reads the run that the slide's own ``lora-jax train`` line
    writes (``runs/sst2-lora/``, cmd_train's default ``--out``). So the test runs that very
    line, taken from the deck's bash block, in an empty working directory, with flags
    appended that point it at the tiny checkpoint and tiny GLUE data of conftest.py and
    keep it short (``--model``, ``--data-dir``, ``--max-length``, ``--max-steps``; the
    last flag wins in argparse). The Python block then runs in that directory unchanged:
    ``restore`` loads the base model the adapter file names, here the tiny one, so no
    block hard-codes a model, nothing is downloaded and the real MiniLM is not loaded.
    """
    import shlex

    from lora_jax.cli import main

    blocks = code_blocks("python")
    assert len(blocks) >= 2, "the deck shows Python; this test should find it"
    shell = [ln.split("#")[0] for _, b in code_blocks("bash") for ln in b.splitlines()]
    train = next(ln for ln in shell if ln.startswith("lora-jax train "))
    merge = next(ln for ln in shell if ln.startswith("lora-jax merge "))
    monkeypatch.chdir(tmp_path)
    assert main([*shlex.split(train)[1:], "--model", str(tiny_base), "--data-dir",
                 str(tiny_glue), "--max-length", "16", "--max-steps", "2", "--quiet"]) == 0
    adapter = shlex.split(merge)[2]
    assert (tmp_path / adapter).is_file(), f"the deck merges {adapter}, which train did not write"
    for i, (title, code) in enumerate(blocks):
        read = re.findall(r'"(runs/[^"]+)"', code)
        assert all(p == adapter for p in read), f"block {i} ({title}) reads {read}, not {adapter}"
        run_block(i, title, code)


def test_speed_tables_keep_one_row_set_per_cpu(build):
    """Two CPUs with the same ISA gave opposite peer ratios: the tables key rows by CPU."""
    from lora_jax.compare import cpu_label

    assert cpu_label({"cpu": "Intel(R) Xeon(R) Processor", "isa": "AVX-512"}) == \
        "Intel Xeon (AVX-512)"
    assert cpu_label({"cpu": "AMD EPYC"}) == "AMD EPYC"  # recorded before the ISA was
    pinned = {"cpu": "Intel(R) Xeon(R) Processor", "isa": "AVX-512", "cores": 1,
              "machine_cores": 2}  # taskset -c 0: a different measurement, its own rows
    assert cpu_label(pinned) == "Intel Xeon (AVX-512), 1 of 2 cores"
    assert cpu_label(dict(pinned, cores=2)) == "Intel Xeon (AVX-512)"
    xeon = {"machine": {"cpu": "Intel(R) Xeon(R) Processor", "isa": "AVX-512"}}
    epyc = {"machine": {"cpu": "AMD EPYC", "isa": "AVX-512"}}
    latest = build.latest([dict(epyc, n=1), dict(xeon, n=2), dict(epyc, n=3)], build._cpu)
    assert {k: r["n"] for k, r in latest.items()} == {"AMD EPYC (AVX-512)": 3,
                                                       "Intel Xeon (AVX-512)": 2}


def test_records_are_read_by_kind_in_the_order_they_were_appended(tmp_path):
    """One reader for every results file (the deck, benchmarks/tables.py, fair.py's costs)."""
    from lora_jax.compare import read_records

    path = tmp_path / "r.jsonl"
    path.write_text('{"benchmark": "a", "n": 1}\n\n{"benchmark": "b", "n": 2}\n'
                    '{"benchmark": "a", "n": 3}\n')
    assert [r["n"] for r in read_records(path, "a")] == [1, 3]
    assert [r["n"] for r in read_records(path)] == [1, 2, 3]
    assert read_records(tmp_path / "none.jsonl", "a", missing_ok=True) == []
    with pytest.raises(FileNotFoundError):  # a table's own results file missing is an error
        read_records(tmp_path / "none.jsonl", "a")


def _tables(monkeypatch, results=None):
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("tables", None)
    import tables

    if results is not None:
        monkeypatch.setattr(tables, "RESULTS", results)
    return tables


def test_committed_speed_tables_are_what_their_records_render(monkeypatch):
    """results/{train_step,latency,peer}.md (the README's and the deck's source) are exactly
    what benchmarks/tables.py renders from the committed JSON lines."""
    tables = _tables(monkeypatch)
    for name, render in (("train_step.md", tables.train_step_table),
                         ("latency.md", tables.latency_table), ("peer.md", tables.peer_table)):
        assert (ROOT / "results" / name).read_text(encoding="utf-8") == render(), \
            f"results/{name} is out of date: run python benchmarks/tables.py"


def test_peer_rows_name_their_own_rounds_and_date(monkeypatch, tmp_path):
    """Runs on two CPUs with 2 and 3 rounds: each row says its own, and the caption speaks for
    no single machine (it once printed the first row's rounds and the last row's CPU)."""
    import json

    def record(cpu, rounds, seq, day):
        return {"benchmark": "peer", "time": f"2026-12-0{day}T10:00:00",
                "config": {"batch": 32, "rounds": rounds, "seq": seq, "steps": 20},
                "machine": {"backend": "cpu", "cores": 2, "cpu": cpu, "isa": "AVX-512",
                            "jax": "0.10.2", "flax": "0.12.8", "optax": "0.2.8"},
                "median_step_ms": {"peft_lora": 300, "jax_lora": 210, "peft_full": 500,
                                   "jax_full": 350},
                "jax_over_peft_lora": 0.7, "jax_over_peft_full": 0.7,
                "lora_over_full_jax": 0.6, "lora_over_full_peft": 0.6}

    rows = [record("AMD EPYC", 3, 32, 2), record("Intel(R) Xeon(R) Processor", 2, 32, 1)]
    (tmp_path / "peer.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = _tables(monkeypatch, tmp_path).peer_table()
    assert "| AMD EPYC (AVX-512) | 32 |" in table and "2026-12-02, 3 rounds |" in table
    assert "| Intel Xeon (AVX-512) | 32 |" in table and "2026-12-01, 2 rounds |" in table
    assert "Measured" not in table and "jax 0.10.2, flax 0.12.8, optax 0.2.8" in table


def test_qlora_quality_says_what_is_measured_and_what_is_not(build, monkeypatch, tmp_path):
    """NF4 − float per task: the interval once two seeds pair up, the rate search's progress
    before a rate is chosen, "not run yet" before any cell."""
    import json

    lora = {"best": [0.857, 0.006], "rate": "0.002", "seeds": [0, 1, 2]}
    tasks = {
        "sst2": {"methods": {"lora": lora, "qlora": dict(lora, best=[0.859, 0.005])},
                 "differences": {"qlora - lora": {"n": 3, "mean": 0.002, "low": -0.013,
                                                  "high": 0.017}}},
        "rte": {"methods": {"lora": dict(lora, seeds=[0]), "qlora": {
            "grid": {"0.0002": 0.6}, "best": None, "seeds": []}}},
        "cola": {"methods": {"lora": lora}},
    }
    (tmp_path / "after_lora").mkdir()
    verdict = {"overall": "On 1 of 3 tasks ... Still to measure: RTE, CoLA.", "complete": False,
               "contrast": "qlora - lora"}
    (tmp_path / "after_lora" / "fair.json").write_text(json.dumps(
        {"tasks": tasks, "verdicts": {"qlora - lora": verdict}}))
    monkeypatch.setattr(build, "RESULTS", tmp_path)
    rows = build.qlora_quality().splitlines()
    # fair.py's verdict closes the block until every task has its seeds ...
    assert rows.pop() == "**So far**: On 1 of 3 tasks ... Still to measure: RTE, CoLA."
    assert rows.pop() == ""
    assert rows[2] == ("| SST-2 | 85.7 ± 0.6 at 0.002 (3 seeds) | 85.9 ± 0.5 at 0.002 (3 seeds) "
                       "| +0.2 | [-1.3, +1.7] |")
    assert rows[3] == ("| RTE | 85.7 ± 0.6 at 0.002 (1 seed) | rate search: 1 rate(s) so far "
                       "| - | - |")
    assert rows[4] == "| CoLA | 85.7 ± 0.6 at 0.002 (3 seeds) | not run yet | - | - |"
    assert "--tasks sst2,rte,cola --methods qlora" in rows[-1]
    # ... then which tasks the paper's claim holds on, from the paired intervals
    d = {"n": 3, "mean": 0.002, "low": -0.013, "high": 0.017, "noise": True}
    done = {"sst2": {"differences": {"qlora - lora": d}, "methods": {"lora": lora}},
            "rte": {"differences": {"qlora - lora": dict(d, low=-0.02, high=0.004)},
                    "methods": {"lora": lora}}}
    verdict.update(complete=True, noise=["sst2", "rte"], below=[], above=[], missing=[])
    (tmp_path / "after_lora" / "fair.json").write_text(json.dumps(
        {"tasks": done, "verdicts": {"qlora - lora": verdict}}))
    assert build.qlora_quality().splitlines()[-1] == (
        "**The paper's claim holds on our model, within seed noise**: NF4 − float's 95 % "
        "interval contains 0 on SST-2 and RTE, and no bound is more than 2.0 points from 0.")
    done["rte"]["differences"]["qlora - lora"].update(mean=-0.03, high=-0.01, noise=False)
    verdict.update(noise=["sst2"], below=["rte"])
    (tmp_path / "after_lora" / "fair.json").write_text(json.dumps(
        {"tasks": done, "verdicts": {"qlora - lora": verdict}}))
    assert build.qlora_quality().splitlines()[-1] == (
        "**The paper's claim does not hold on every task here**: NF4 − float is outside seed "
        "noise on RTE (-3.0).")


def test_after_lora_quality_sentence_reads_each_variants_verdict(build):
    """Per variant against what it changes: outside noise with the task and the mean, within
    noise everywhere once complete, "so far" with what is missing until every task has it."""
    def pair(mean, noise):
        return {"n": 3, "mean": mean, "low": mean - 0.01, "high": mean + 0.01, "noise": noise}

    def v(label, noise=(), below=(), above=(), missing=()):
        return {"label": label, "noise": list(noise), "below": list(below),
                "above": list(above), "missing": list(missing), "complete": not missing}

    f = {"tasks": {"rte": {"differences": {"pissa - lora": pair(0.043, False),
                                           "dora - lora": pair(0.0, True)}},
                   "sst2": {"differences": {"pissa - lora": pair(-0.006, True),
                                            "dora - lora": pair(-0.02, False),
                                            "lora-r64 - lora": pair(0.007, True)}}},
         "verdicts": {"pissa - lora": v("PiSSA − LoRA", ["sst2"], above=["rte"]),
                      "dora - lora": v("DoRA − LoRA", ["rte"], below=["sst2"]),
                      "lora-r64 - lora": v("r64 − LoRA", ["sst2"], missing=["rte"]),
                      "loraplus - lora": v("LoRA+ − LoRA", ["rte", "sst2"])}}
    for contrast, verdict in f["verdicts"].items():  # as fair.verdict names its contrast
        verdict["contrast"] = contrast
    assert build._after_claim(f) == (
        "\n\n**Quality, so far**: outside seed noise (3 seeds, a 95 % interval that excludes 0): "
        "DoRA − LoRA below on SST-2 (-2.0); PiSSA − LoRA above on RTE (+4.3). Within seed "
        "noise on every task: LoRA+ − LoRA. Still to measure: r64 − LoRA on RTE.")
    del f["verdicts"]["lora-r64 - lora"], f["verdicts"]["dora - lora"]
    f["verdicts"]["pissa - lora"].update(noise=["rte", "sst2"], above=[])
    assert build._after_claim(f) == (
        "\n\n**Quality**: no variant is outside seed noise on a task with 3 seeds. Within seed "
        "noise on every task: LoRA+ − LoRA, PiSSA − LoRA.")
    assert build._after_claim({"tasks": {}, "verdicts": {}}) == ""
