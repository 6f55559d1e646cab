"""The notebooks under pytest (``make test`` runs them in quick mode with nbmake): a pytest
plugin that ``pyproject.toml`` loads (``-p glue_skip``). Not a ``conftest.py``: the tests import
their helpers ``from conftest``, and a second module of that name would shadow theirs.

A notebook that trains on GLUE needs the task's files on this machine: from
``$LORA_JAX_GLUE_DIR`` (CI sets it) or the download cache. Without them it would download the
official archives, and tests never touch the network, so it is skipped with the reason instead.
``tests/test_layout.py`` checks that this list names every GLUE task a notebook trains on.
"""

from pathlib import Path

import pytest

from lora_jax.glue import get_task, local_data_dir

GLUE_TASKS = {  # notebook -> the GLUE tasks it reads
    "01_why_adapt.ipynb": ("sst2",),
    "06_glue_lora_vs_full.ipynb": ("sst2",),
    "07_many_tasks_one_model.ipynb": ("sst2", "mrpc", "stsb"),
    "08_inside_the_update.ipynb": ("sst2",),
    "11_lora_on_any_model.ipynb": ("sst2",),
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        tasks = GLUE_TASKS.get(Path(item.path).name, ())
        missing = [t for t in tasks if local_data_dir(get_task(t)) is None]
        if missing:
            item.add_marker(pytest.mark.skip(
                reason=f"no GLUE files for {', '.join(missing)} on this machine and tests do "
                       "not download: set LORA_JAX_GLUE_DIR to a GLUE directory (CI does)"))
