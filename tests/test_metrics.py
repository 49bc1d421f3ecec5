"""Each evaluation metric against small cases computed by hand: perfect, random, constant, ties."""

import numpy as np
import pandas as pd
import pytest

from artsim_lib.core import metrics as M


def test_mse_mae_by_hand():
    assert M.mse([0, 0.5, 1], [0, 1, 0]) == pytest.approx((0 + 0.25 + 1) / 3)
    assert M.mae([0, 0.5, 1], [0, 1, 0]) == pytest.approx((0 + 0.5 + 1) / 3)


def test_triplet_accuracy_counts_ties_half():
    assert M.triplet_accuracy([0.9, 0.2, 0.5], [0.1, 0.3, 0.5]) == pytest.approx((1 + 0 + 0.5) / 3)


def test_retrieval_by_hand():
    sim = np.array(
        [
            [0.9, 0.1, 0.5],  # answer 0 -> rank 1
            [0.8, 0.7, 0.9],  # answer 1 -> rank 3
            [0.3, 0.6, 0.6],
        ]
    )  # answer 2 ties with item 1 -> rank 1 or 2: 1.5 expected
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
    sim = np.array([[0.5, 0.9, 0.1]])  # item 1 (a duplicate of the answer) outranks it
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
    df = pd.DataFrame(
        {
            "original_id": ["a", "a", "b", "b", "c", "c"],
            "level": ["moderate", "radical"] * 3,
            "score": [0.9, 0.5, 0.4, 0.6, 0.7, 0.7],
        }
    )
    assert M.moderate_above_radical(df) == pytest.approx((1 + 0 + 0.5) / 3)
    assert M.moderate_above_radical_per_original(df).to_dict() == {"a": 1, "b": 0, "c": 0.5}
    assert np.isnan(M.moderate_above_radical(df[df["level"] == "moderate"]))  # no radical: undefined
    assert M.moderate_above_radical_per_original(df[df["level"] == "moderate"]).empty
    cal = pd.DataFrame(
        {
            "family": ["blur"] * 4 + ["hue"] * 4,
            "strength": [0.25, 0.5, 0.75, 1.0] * 2,
            "score": [0.9, 0.8, 0.7, 0.6, 0.5, 0.7, 0.6, 0.8],
        }
    )
    mono = M.monotonicity(cal).set_index("family")
    assert mono.loc["blur", "spearman"] == pytest.approx(-1) and mono.loc["blur", "falling_steps"] == 1
    assert mono.loc["hue", "falling_steps"] == pytest.approx(1 / 3)


def percentile(stat, groups, n_boot, seed=0, ci=0.95):
    """The percentile interval of :func:`M.grouped_bootstrap`."""
    out = M.grouped_bootstrap(stat, groups, n_boot, ci, seed, method="percentile")
    return out["value"], out["lo"], out["hi"]


def test_bootstrap_interval_contains_the_point_and_shrinks_with_data():
    rng = np.random.default_rng(1)
    small, large = rng.normal(size=20), rng.normal(size=2000)
    p, lo, hi = percentile(lambda r: small[r].mean(), np.arange(20), 300)
    assert lo <= p <= hi
    _, lo2, hi2 = percentile(lambda r: large[r].mean(), np.arange(2000), 300)
    assert (hi2 - lo2) < (hi - lo)
    g, x = np.repeat(np.arange(10), 5), np.repeat(rng.normal(size=10), 5)
    _, glo, ghi = percentile(lambda r: x[r].mean(), g, 300, seed=3)
    _, ilo, ihi = percentile(lambda r: x[r].mean(), np.arange(len(x)), 300, seed=3)
    assert (ghi - glo) > (ihi - ilo)  # correlated rows: resampling groups is honest about it


def test_grouped_percentile_interval_is_resampling_whole_groups_of_a_frame():
    """The oracle: draw whole groups (sorted by label) with the same generator, concatenate their
    rows in order, take the statistic, then the quantiles -- slow, and obviously right."""
    rng = np.random.default_rng(2)
    df = pd.DataFrame({"g": rng.integers(0, 7, 60), "x": rng.normal(size=60)})
    parts = [d for _, d in df.groupby("g", sort=True)]
    draw = np.random.default_rng(5)
    values = np.array(
        [pd.concat([parts[i] for i in draw.integers(0, len(parts), len(parts))])["x"].mean() for _ in range(200)]
    )
    ref = (df["x"].mean(), *np.quantile(values, [0.05, 0.95]))
    x = df["x"].to_numpy()
    assert percentile(lambda r: x[r].mean(), df["g"], 200, seed=5, ci=0.9) == pytest.approx(ref, abs=1e-12)


def test_rank_correlation_is_spearman():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 40), rng.normal(size=40)
    assert M.rank_correlation(x, y) == pytest.approx(M.spearman(x, y), abs=1e-12)
    assert np.isnan(M.rank_correlation([1, 1, 1], [1, 2, 3]))


def test_nan_is_never_ranked_first_and_is_counted():
    assert M.expected_ranks(np.array([[np.nan, 0.5, 0.2]]), [0]).tolist() == [3]  # NaN answer: last
    assert M.recall_at_k(np.array([[np.nan, 0.5, 0.2]]), [0], 1) == 0
    assert M.expected_ranks(np.array([[0.5, np.nan, 0.2]]), [0]).tolist() == [1]  # NaN distractor below
    assert M.expected_ranks(np.array([[np.nan, np.nan, 0.1]]), [0]).tolist() == [2.5]  # NaNs tie
    assert M.triplet_accuracy([np.nan, 0.5, np.nan], [0.1, np.nan, np.nan]) == pytest.approx((0 + 1 + 0.5) / 3)
    assert M.roc_auc([np.nan, 0.2], [1, 0]) == 0
    assert M.count_nan([np.nan, 1, np.nan]) == 2


def _ap_of_order(labels):
    """AP of one fixed ranking, the textbook way."""
    hits = np.cumsum(labels)
    return sum(hits[i] / (i + 1) for i in range(len(labels)) if labels[i]) / sum(labels)


def test_micro_ap_by_hand_with_absent_queries():
    # q1's original is present (pairs true at 0.9 and 0.7); q2's original is absent: its 0.8 is a false alarm
    scores, labels = [0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]
    assert M.micro_ap(scores, labels) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert M.micro_ap(scores, labels, n_positives=3) == pytest.approx((1 / 1 + 2 / 3) / 3)  # one never scored
    assert M.micro_ap([0.9, 0.7, 0.1], [1, 1, 0]) == 1  # without the absent query's false alarm
    assert M.micro_ap([0.5, 0.5], [1, 0]) == pytest.approx((1 + 1 / 2) / 2)  # a tie: expected over orders
    assert M.micro_ap([np.nan, 0.1], [1, 0]) == pytest.approx(1 / 2)  # NaN true pair ranked last
    assert np.isnan(M.micro_ap([0.3], [0]))


def test_micro_ap_ties_equal_the_mean_over_every_order():
    import itertools

    scores = [0.9, 0.5, 0.5, 0.5, 0.5, 0.2, 0.2]
    labels = [0, 1, 0, 1, 1, 0, 1]
    tied = [1, 2, 3, 4]
    orders = []
    for perm in itertools.permutations(tied):
        lab = [labels[0]] + [labels[i] for i in perm]
        for tail in itertools.permutations([5, 6]):
            orders.append(_ap_of_order(lab + [labels[i] for i in tail]))
    assert M.micro_ap(scores, labels) == pytest.approx(np.mean(orders))
    lab = np.arange(40) < 4  # a constant measure: a random order's AP
    rng = np.random.default_rng(0)
    sampled = np.mean([_ap_of_order(rng.permutation(lab)) for _ in range(4000)])
    assert M.micro_ap(np.zeros(40), lab) == pytest.approx(sampled, abs=0.01)


def test_recall_at_precision_by_hand():
    scores, labels = [0.9, 0.8, 0.7, 0.6, 0.5], [1, 1, 0, 1, 0]
    assert M.recall_at_precision(scores, labels, 0.9) == pytest.approx(2 / 3)
    assert M.recall_at_precision(scores, labels, 0.75) == 1
    assert M.recall_at_precision(scores, labels, 0.9, n_positives=4) == pytest.approx(2 / 4)
    assert M.recall_at_precision([0.9, 0.9, 0.1], [1, 0, 1], 0.9) == 0  # a tie is taken whole


def test_query_anchored_accuracy_uses_the_query_side():
    # s(derivative, original) vs s(derivative, negative): the derivative is the anchor
    assert M.query_anchored_accuracy([0.8, 0.3], [0.5, 0.3]) == pytest.approx((1 + 0.5) / 2)


def test_spearman_within_each_original_is_not_diluted_by_pooling():
    df = pd.DataFrame(
        {"original_id": list("aaabbb"), "strength": [1, 2, 3] * 2, "score": [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]}
    )
    rho, groups = M.spearman_within(df, "strength", "score", "original_id")
    assert rho == pytest.approx(-1) and groups == 2
    assert M.spearman(df["strength"], df["score"]) > -0.5  # pooled: the originals' levels mix in
    df.loc[df["original_id"] == "b", "score"] = [0.1, 0.2, 0.3]
    assert M.spearman_within(df, "strength", "score", "original_id")[0] == pytest.approx(0)
    const = df.assign(score=[0.5, 0.5, 0.5, 0.3, 0.2, 0.1])  # all-tied scores order nothing: 0
    assert M.spearman_within(const, "strength", "score", "original_id") == (pytest.approx(-0.5), 2)
    single = df.assign(strength=[1, 1, 1, 1, 2, 3])  # no strengths to order: left out
    assert M.spearman_within(single, "strength", "score", "original_id") == (pytest.approx(1), 1)


def test_exact_intervals_by_hand():
    lo, hi = M.clopper_pearson(13, 13)
    assert lo == pytest.approx(0.025 ** (1 / 13)) and hi == 1  # closed form at k = n
    assert M.clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** (1 / 10))
    lo, hi = M.clopper_pearson(5, 10)
    assert lo == pytest.approx(0.187086, abs=1e-5) and hi == pytest.approx(0.812914, abs=1e-5)


def test_bca_matches_scipy_on_independent_rows():
    from scipy import stats

    x = np.random.default_rng(4).exponential(size=40)  # skewed: BCa differs from percentile
    ours = M.grouped_bootstrap(lambda r: x[r].mean(), np.arange(40), n_boot=4000, seed=1)
    ref = stats.bootstrap((x,), np.mean, n_resamples=4000, method="BCa", random_state=2).confidence_interval
    assert ours["n"] == 40 and ours["value"] == pytest.approx(x.mean())
    assert ours["lo"] == pytest.approx(ref.low, abs=0.04) and ours["hi"] == pytest.approx(ref.high, abs=0.06)
    pct = M.grouped_bootstrap(lambda r: x[r].mean(), np.arange(40), n_boot=4000, seed=1, method="percentile")
    assert ours["lo"] > pct["lo"]  # shifted right, as a right skew asks


def test_grouped_bootstrap_counts_groups_and_draws_them_whole():
    groups = np.repeat(np.arange(5), 3)
    x = np.repeat([0.0, 1, 2, 3, 4], 3)
    out = M.grouped_bootstrap(lambda r: np.std(x[r].reshape(-1, 3), axis=1).max(), groups, n_boot=50)
    assert out["n"] == 5 and np.all(out["values"] == 0)  # a group is never split
    same = M.grouped_bootstrap(lambda r: 1.0, groups, n_boot=20)
    assert (same["lo"], same["hi"]) == (1.0, 1.0)


def test_paired_difference_by_hand():
    groups = np.arange(12)
    rng = np.random.default_rng(0)
    a = rng.random(12)
    b = a - 0.2  # a beats b by 0.2 on every original
    d = M.paired_difference(lambda r: a[r].mean(), lambda r: b[r].mean(), groups, n_boot=200)
    assert d["value"] == pytest.approx(0.2) and d["lo"] == pytest.approx(0.2) and d["excludes_0"]
    same = M.paired_difference(lambda r: a[r].mean(), lambda r: a[r].mean(), groups, n_boot=200)
    assert same["value"] == 0 and not same["excludes_0"]
    # unpaired intervals of a and b overlap widely, the paired one does not
    ia = M.grouped_bootstrap(lambda r: a[r].mean(), groups, n_boot=200)
    ib = M.grouped_bootstrap(lambda r: b[r].mean(), groups, n_boot=200)
    assert ia["lo"] < ib["hi"]


def test_ranked_pairs_equal_micro_ap_and_count_a_resampled_query_twice():
    rng = np.random.default_rng(3)
    sim = np.round(rng.random((6, 5)), 1)  # coarse: many ties
    truth = np.array([0, 1, 2, -1, 4, -1])  # two queries whose original is absent
    scores, labels, q = M.top_candidates(sim, truth, k=5)
    rp = M.RankedPairs(scores, labels, q, truth >= 0)
    assert rp.micro_ap() == pytest.approx(M.micro_ap(sim.ravel(), (np.arange(5)[None] == truth[:, None]).ravel()))
    rows = np.array([0, 0, 3, 4])  # query 0 drawn twice
    dup_scores = np.concatenate([sim[r] for r in rows])
    dup_labels = np.concatenate([np.arange(5) == truth[r] for r in rows])
    assert rp.micro_ap(rows) == pytest.approx(M.micro_ap(dup_scores, dup_labels))
    assert rp.recall_at_precision(0.5, rows) == pytest.approx(M.recall_at_precision(dup_scores, dup_labels, 0.5))


def test_top_candidates_keep_ties_at_the_cut_and_count_missed_truths():
    sim = np.array([[0.9, 0.5, 0.5, 0.1], [0.2, 0.3, 0.4, 0.5]])
    scores, labels, q = M.top_candidates(sim, np.array([3, 3]), k=2)
    assert q.tolist() == [0, 0, 0, 1, 1] and labels.tolist() == [False] * 3 + [False, True]
    rp = M.RankedPairs(scores, labels, q, [True, True])
    # query 0's truth is cut off (1 of 2 true pairs found); query 1's ties with two of query 0's
    # candidates below the false 0.9: rank 2, 3 or 4 with equal chance
    assert rp.micro_ap() == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3 / 2)


def test_binary_text_image_accuracy_by_hand():
    # 2-d embeddings: the original [1, 0]; its derivative's caption [1, 1] (cos .707), the negative's
    # caption [0, 1] (cos 0) -> i2t right; t2i: caption [1, 1] vs the negative original [1, 1] (cos 1) -> wrong
    a, tp, n_img, tn = [[1, 0], [1, 0]], [[1, 1], [1, 0]], [[1, 1], [0, 1]], [[0, 1], [1, 0]]
    out = M.binary_text_image_accuracy(a, tp, n_img, tn)
    # second triplet: i2t cos(a, tp) = 1 ties cos(a, tn) = 1 -> half; t2i 1 vs 0 -> right
    assert out["i2t"] == pytest.approx((1 + 0.5) / 2) and out["t2i"] == pytest.approx((0 + 1) / 2)
    assert out["chance"] == 0.5 and out["triplets"] == 2


def test_large_groupings_are_redrawn_identically_and_the_jackknife_sampled(monkeypatch):
    from scipy import stats

    x = np.random.default_rng(5).exponential(size=600)
    small = M.grouped_bootstrap(lambda r: x[r].mean(), np.arange(600), n_boot=300, seed=2)
    M._DRAWS.clear()
    monkeypatch.setattr(M, "CACHE_MAX_ROWS", 10)  # nothing kept: draws made again per use
    again = M.grouped_bootstrap(lambda r: x[r].mean(), np.arange(600), n_boot=300, seed=2)
    assert np.array_equal(small["values"], again["values"])
    assert len(M.group_draws(np.arange(600), 5, seed=2)) == 5
    # 600 groups > MAX_JACKKNIFE: the acceleration from 200 of them, rescaled, stays near the full one
    ref = stats.bootstrap((x,), np.mean, n_resamples=3000, method="BCa", random_state=0).confidence_interval
    out = M.grouped_bootstrap(lambda r: x[r].mean(), np.arange(600), n_boot=3000, seed=1)
    assert out["lo"] == pytest.approx(ref.low, abs=0.03) and out["hi"] == pytest.approx(ref.high, abs=0.03)
    M._DRAWS.clear()
