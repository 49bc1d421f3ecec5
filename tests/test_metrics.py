"""Each evaluation metric against small cases computed by hand: perfect, random, constant, ties."""
import numpy as np
import pandas as pd
import pytest

from artsim_lib import metrics as M


def test_mse_mae_by_hand():
    assert M.mse([0, 0.5, 1], [0, 1, 0]) == pytest.approx((0 + 0.25 + 1) / 3)
    assert M.mae([0, 0.5, 1], [0, 1, 0]) == pytest.approx((0 + 0.5 + 1) / 3)


def test_triplet_accuracy_counts_ties_half():
    assert M.triplet_accuracy([0.9, 0.2, 0.5], [0.1, 0.3, 0.5]) == pytest.approx((1 + 0 + 0.5) / 3)


def test_retrieval_by_hand():
    sim = np.array([[0.9, 0.1, 0.5],    # answer 0 -> rank 1
                    [0.8, 0.7, 0.9],    # answer 1 -> rank 3
                    [0.3, 0.6, 0.6]])   # answer 2 ties with item 1 -> rank 1 or 2: 1.5 expected
    true = np.array([0, 1, 2])
    assert M.expected_ranks(sim, true).tolist() == [1, 3, 1.5]
    assert M.recall_at_k(sim, true, 1) == pytest.approx((1 + 0 + 0.5) / 3)
    assert M.recall_at_k(sim, true, 2) == pytest.approx((1 + 0 + 1) / 3)
    assert M.mean_reciprocal_rank(sim, true) == pytest.approx((1 + 1 / 3 + (1 / 1 + 1 / 2) / 2) / 3)
    assert M.retrieval_metrics(sim, true, ks=(1,))["median_rank"] == 1.5


def test_perfect_constant_and_random_measures():
    n = 50
    true = np.arange(n)
    perfect = np.eye(n)
    r = M.retrieval_metrics(perfect, true)
    assert r["R@1"] == 1 and r["mAP"] == 1 and r["median_rank"] == 1
    const = M.retrieval_metrics(np.zeros((n, n)), true)
    assert const["R@1"] == pytest.approx(1 / n) and const["R@10"] == pytest.approx(10 / n)
    assert const["median_rank"] == pytest.approx((n + 1) / 2)
    assert const["mAP"] == pytest.approx(np.mean(1 / np.arange(1, n + 1)))
    rng = np.random.default_rng(0)
    rand = np.mean([M.recall_at_k(rng.random((n, n)), true, 5) for _ in range(20)])
    assert abs(rand - 5 / n) < 0.04


def test_excluding_near_duplicates_removes_them_from_the_candidates():
    sim = np.array([[0.5, 0.9, 0.1]])   # item 1 (a duplicate of the answer) outranks it
    exclude = np.array([[False, True, False]])
    assert M.recall_at_k(sim, [0], 1) == 0
    assert M.recall_at_k(sim, [0], 1, exclude=exclude) == 1
    assert M.recall_at_k(sim, [0], 1, exclude=np.array([[True, True, False]])) == 1  # answer kept


def test_roc_auc_by_hand_and_edge_cases():
    assert M.roc_auc([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == 1
    assert M.roc_auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0
    assert M.roc_auc([0.5, 0.5, 0.5], [1, 0, 0]) == 0.5
    assert M.roc_auc([0.9, 0.3, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(3 / 4)
    assert np.isnan(M.roc_auc([0.1, 0.2], [1, 1]))


def test_spearman_and_constant_input():
    assert M.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert np.isnan(M.spearman([1, 1, 1], [1, 2, 3]))


def test_moderate_above_radical_and_monotonicity():
    df = pd.DataFrame({"original_id": ["a", "a", "b", "b", "c", "c"],
                       "level": ["moderate", "radical"] * 3, "score": [0.9, 0.5, 0.4, 0.6, 0.7, 0.7]})
    assert M.moderate_above_radical(df) == pytest.approx((1 + 0 + 0.5) / 3)
    cal = pd.DataFrame({"family": ["blur"] * 4 + ["hue"] * 4, "strength": [0.25, 0.5, 0.75, 1.0] * 2,
                        "score": [0.9, 0.8, 0.7, 0.6, 0.5, 0.7, 0.6, 0.8]})
    mono = M.monotonicity(cal).set_index("family")
    assert mono.loc["blur", "spearman"] == pytest.approx(-1) and mono.loc["blur", "falling_steps"] == 1
    assert mono.loc["hue", "falling_steps"] == pytest.approx(1 / 3)


def test_bootstrap_interval_contains_the_point_and_shrinks_with_data():
    rng = np.random.default_rng(1)
    small = pd.DataFrame({"x": rng.normal(size=20)})
    large = pd.DataFrame({"x": rng.normal(size=2000)})
    p, lo, hi = M.bootstrap_ci(lambda d: d["x"].mean(), small, n=300)
    assert lo <= p <= hi
    _, lo2, hi2 = M.bootstrap_ci(lambda d: d["x"].mean(), large, n=300)
    assert (hi2 - lo2) < (hi - lo)
    grouped = pd.DataFrame({"g": np.repeat(np.arange(10), 5), "x": np.repeat(rng.normal(size=10), 5)})
    _, glo, ghi = M.bootstrap_ci(lambda d: d["x"].mean(), grouped, groups="g", n=300, seed=3)
    _, ilo, ihi = M.bootstrap_ci(lambda d: d["x"].mean(), grouped, n=300, seed=3)
    assert (ghi - glo) > (ihi - ilo)  # correlated rows: resampling groups is honest about it
