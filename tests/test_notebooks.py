"""The notebooks' test harness (``notebooks/glue_skip.py``): a notebook that trains on GLUE is
skipped, with the reason, on a machine that has no GLUE files, instead of downloading them; its
list of the tasks each notebook reads is complete."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import glue_skip  # notebooks/, on pytest's path (pyproject.toml)
import pytest

from lora_jax.glue import TASKS

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
READS_DATA = re.compile(r"\b(load_split|fit|compare)\(")  # what reads a GLUE split


def named_tasks(source: str) -> set[str]:
    """The GLUE tasks a notebook's code names as string literals."""
    return {t for t in TASKS if re.search(rf"[\"']{t}[\"']", source)}


def code(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_every_notebook_that_reads_glue_lists_its_tasks():
    listed = glue_skip.GLUE_TASKS
    assert set(listed) <= {p.name for p in NOTEBOOKS.glob("*.ipynb")}, "a listed notebook is gone"
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        source = code(path)
        if not READS_DATA.search(source):
            continue
        named = named_tasks(source)
        assert named, f"{path.name} reads data but names no GLUE task"
        assert named <= set(listed.get(path.name, ())), (
            f"{path.name} reads {sorted(named)}; notebooks/glue_skip.py lists "
            f"{listed.get(path.name, ())}")


def test_a_notebook_without_its_glue_files_is_skipped_with_the_reason(tmp_path, monkeypatch):
    def collect():
        items = [SimpleNamespace(path=NOTEBOOKS / name, markers=[]) for name in
                 ("07_many_tasks_one_model.ipynb", "02_lora_from_scratch.ipynb")]
        for item in items:
            item.add_marker = item.markers.append
        glue_skip.pytest_collection_modifyitems(None, items)
        return {item.path.name: item.markers for item in items}

    monkeypatch.delenv("LORA_JAX_GLUE_DIR", raising=False)
    monkeypatch.setenv("LORA_JAX_CACHE", str(tmp_path))  # an empty download cache
    marks = collect()
    assert marks["02_lora_from_scratch.ipynb"] == []  # needs no GLUE
    (skip,) = marks["07_many_tasks_one_model.ipynb"]
    assert skip.name == "skip"
    assert "sst2, mrpc, stsb" in skip.kwargs["reason"]
    assert "LORA_JAX_GLUE_DIR" in skip.kwargs["reason"]

    sst2 = tmp_path / "glue" / "SST-2"  # a cache that holds one of the three tasks
    sst2.mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        (sst2 / name).write_text("sentence\tlabel\n")
    (skip,) = collect()["07_many_tasks_one_model.ipynb"]
    assert "mrpc, stsb" in skip.kwargs["reason"] and "sst2" not in skip.kwargs["reason"]

    monkeypatch.setenv("LORA_JAX_GLUE_DIR", str(tmp_path))  # the user's directory: trusted
    assert collect()["07_many_tasks_one_model.ipynb"] == []


@pytest.mark.parametrize("name", ["01_why_adapt.ipynb", "11_lora_on_any_model.ipynb"])
def test_the_check_sees_a_notebooks_tasks(name):
    assert named_tasks(code(NOTEBOOKS / name)) == {"sst2"}
