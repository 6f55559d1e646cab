"""Every Python snippet in README.md runs, and its generated results match results/."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_snippets():
    assert python_blocks()


def test_readme_snippets_run(capsys):
    for i, code in enumerate(python_blocks()):
        exec(compile(code, f"README.md[python block {i}]", "exec"), {})
    out = capsys.readouterr().out
    assert "1024" in out and "384 (1, 2)" in out


def test_readme_generated_results_match_the_results():
    """The README's generated blocks (the fair comparison) are what slides/build.py renders
    from results/: no hand-edited number."""
    import importlib.util

    path = README.parent / "slides" / "build.py"
    spec = importlib.util.spec_from_file_location("slides_build", path)
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    text = README.read_text(encoding="utf-8")
    names = {m["name"] for m in build.BLOCK.finditer(text)}
    assert {"fair", "fair_answer"} <= names
    assert build.render(text, README) == text, "run: python slides/build.py"


def test_after_lora_heading_says_in_progress_exactly_while_cells_are_missing():
    """The README's hand-written heading over the after-LoRA table agrees with the results: it
    says "(in progress)" while any variant's comparison still misses a task, and only then."""
    import json

    fair = json.loads((README.parent / "results" / "after_lora" / "fair.json").read_text())
    heading = next(ln for ln in README.read_text(encoding="utf-8").splitlines()
                   if ln.startswith("### After LoRA: what"))
    incomplete = sorted(c for c, v in fair["verdicts"].items() if not v["complete"])
    assert heading.endswith("(in progress)") == bool(incomplete), (heading, incomplete)
