"""softq.rl.experiments.stats: intervals and probabilities of improvement over seeds, through rliable, checked by
hand."""

import itertools

import numpy as np
import pytest
from _runs import write_run

from softq.rl.experiments import stats


def test_final_scores_at_the_last_common_point_and_at_a_named_one(tmp_path):
    write_run(tmp_path, "naive", 0, [10, 20, 30], [1.0, 2.0, 3.0])
    write_run(tmp_path, "naive", 1, [10, 20], [4.0, 5.0])  # still running: the common point is 20
    write_run(tmp_path, "proper", 0, [10, 20, 30], [7.0, 8.0, 9.0])
    assert stats.final_scores(tmp_path, ["naive", "proper"]) == {"naive": {0: 2.0, 1: 5.0}, "proper": {0: 8.0}}
    assert stats.final_scores(tmp_path, ["naive"], frames=10) == {"naive": {0: 1.0, 1: 4.0}}
    with pytest.raises(ValueError, match="seed1 has no row at 30"):
        stats.final_scores(tmp_path, ["naive"], frames=30)
    with pytest.raises(ValueError, match="no runs of"):
        stats.final_scores(tmp_path, ["soft_q"])


def test_mean_interval_is_the_percentile_bootstrap_of_the_mean():
    """The interval of three scores: the 2.5% and 97.5% quantiles of the means of resampled seeds, which a direct
    numpy bootstrap reproduces to within its sampling error; reproducible with the seed; inside the scores' range."""
    scores = {"a": [-20.0, 15.0, 18.0], "b": {0: 3.0}}
    out = stats.mean_intervals(scores, reps=10_000)
    assert out == stats.mean_intervals(scores, reps=10_000)
    mean, lo, hi = out["a"]
    assert mean == pytest.approx(13.0 / 3) and -20.0 <= lo < mean < hi <= 18.0
    rng = np.random.default_rng(1)
    x = np.array(scores["a"])
    boot = x[rng.integers(0, 3, (200_000, 3))].mean(1)
    assert lo == pytest.approx(np.quantile(boot, 0.025), abs=0.5)
    assert hi == pytest.approx(np.quantile(boot, 0.975), abs=0.5)
    assert out["b"] == (3.0, 3.0, 3.0)
    with pytest.raises(ValueError, match="finite"):
        stats.mean_intervals({"c": [1.0, float("nan")]})


def test_probability_of_improvement_counts_pairs_of_seeds():
    x, y = [1.0, 5.0, 9.0], [2.0, 5.0, 3.0]
    p, lo, hi = stats.improvement_probability(x, y, reps=1000)
    pairs = [(a > b) + 0.5 * (a == b) for a, b in itertools.product(x, y)]
    assert p == pytest.approx(sum(pairs) / len(pairs))
    assert 0.0 <= lo <= p <= hi <= 1.0
    assert stats.improvement_probability([5.0, 6.0], [1.0, 2.0], reps=200) == (1.0, 1.0, 1.0)
    assert stats.improvement_probability({0: 1.0}, {0: 1.0}, reps=200)[0] == 0.5


def test_score_comparison_reports_means_intervals_and_whether_the_seeds_rank(tmp_path):
    for seed, (a, b) in enumerate([(10.0, -20.0), (12.0, -19.0), (15.0, -21.0)]):
        write_run(tmp_path, "proper", seed, [5, 10], [0.0, a])
        write_run(tmp_path, "naive", seed, [5, 10], [0.0, b])
    out = stats.score_comparison(tmp_path, ["naive", "proper"], [("proper", "naive")], reps=500)
    assert out["frames"] == 10 and out["scores"]["proper"] == {0: 10.0, 1: 12.0, 2: 15.0}
    assert out["improvement"]["proper", "naive"] == (1.0, 1.0, 1.0)  # the bootstrap's interval excludes 1/2 ...
    assert "no ranking: with 3 and 3 seeds no outcome can" in out["text"][-1]  # ... but 1 split in 10 does that
    assert stats.permutation_pvalue([10.0, 12.0, 15.0], [-20.0, -19.0, -21.0]) == (0.1, 0.1)
    early = stats.score_comparison(tmp_path, ["naive", "proper"], [("proper", "naive")], frames=5, reps=500)
    assert early["improvement"]["proper", "naive"][0] == 0.5 and "support no ranking" in early["text"][-1]
    for seed in range(3, 6):  # six seeds a side, all of proper above all of naive: p = 2 / C(12, 6)
        write_run(tmp_path, "proper", seed, [5, 10], [0.0, 20.0 - seed])
        write_run(tmp_path, "naive", seed, [5, 10], [0.0, -18.0 + seed / 10])
    six = stats.score_comparison(tmp_path, ["naive", "proper"], [("proper", "naive")], reps=500)
    assert six["text"][-1].endswith(f"proper scores higher (exact permutation test, p = {2 / 924:.3f})")


def test_one_seed_a_side_reports_no_interval(tmp_path):
    """A bootstrap over one seed has width 0: the text says there is no interval instead of printing [x, x]."""
    write_run(tmp_path, "proper", 0, [5, 10], [0.0, -6.9])
    write_run(tmp_path, "naive", 0, [5, 10], [0.0, -7.9])
    text = stats.score_comparison(tmp_path, ["naive", "proper"], [("proper", "naive")], reps=200)["text"]
    assert "naive: mean -7.9, no interval from one seed; seeds [0]: -7.9" in text[1]
    assert "no interval from one pair over 1 x 1 pairs" in text[-1] and "no outcome can" in text[-1]
    write_run(tmp_path, "proper", 1, [5, 10], [0.0, -5.0])
    text = stats.score_comparison(tmp_path, ["naive", "proper"], [("proper", "naive")], reps=200)["text"]
    assert "proper: mean -6.0, 95% CI [" in text[2] and "95% CI [" in text[-1]
