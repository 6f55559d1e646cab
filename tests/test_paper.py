"""The paper's quoted numbers: a typo in a transcription would show as a wrong average."""

import statistics

import pytest

from lora_jax.paper import TABLE2_ROBERTA_BASE, TABLE2_TASKS


@pytest.mark.parametrize("method", list(TABLE2_ROBERTA_BASE))
def test_table2_rows_average_to_the_papers_printed_average(method):
    params, scores, printed = TABLE2_ROBERTA_BASE[method]
    assert tuple(scores) == TABLE2_TASKS
    assert statistics.mean(scores.values()) == pytest.approx(printed, abs=0.06)  # rounded
    assert params.endswith("M")
