"""GLUE metrics against hand-computed values and scipy."""

import numpy as np
import pytest
from scipy import stats

from lora_jax.metrics import accuracy, compute, f1, mcc, pearson, rankdata, spearman


def test_hand_computed_values():
    pred = np.array([1, 1, 0, 0, 1, 0])
    gold = np.array([1, 0, 0, 1, 1, 0])
    # tp=2 fp=1 fn=1 tn=2
    assert accuracy(pred, gold) == pytest.approx(4 / 6)
    assert f1(pred, gold) == pytest.approx(2 * 2 / (3 + 3))
    assert mcc(pred, gold) == pytest.approx((2 * 2 - 1 * 1) / np.sqrt(3 * 3 * 3 * 3))


def test_mcc_of_a_constant_predictor_is_zero():
    assert mcc(np.ones(5, int), np.array([1, 0, 1, 0, 1])) == 0.0


def test_correlations_match_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    y[:20] = np.round(y[:20])  # some ties
    x[50:60] = 1.0
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    np.testing.assert_array_equal(rankdata(x), stats.rankdata(x))


def test_mcc_matches_scipy_phi():
    rng = np.random.default_rng(1)
    p, g = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    assert mcc(p, g) == pytest.approx(stats.pearsonr(p, g)[0], abs=1e-12)


def test_compute_by_name():
    out = compute(("accuracy", "f1"), np.array([1, 0]), np.array([1, 1]))
    assert out == {"accuracy": 0.5, "f1": pytest.approx(2 / 3)}
