"""Tests of rlfl.compare_stats: known answers, interval coverage, pairing, determinism, error messages."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from rlfl.compare_stats import (
    agreement,
    bootstrap_ci,
    distinct_n,
    format_ci,
    paired_diff_ci,
    round_floats,
    win_rate,
)


def _binomial_band(n: int, p: float, z: float = 3.5) -> tuple[float, float]:
    """Counts a Binomial(n, p) stays within (z standard deviations) except once in a few thousand runs."""
    sd = math.sqrt(n * p * (1 - p))
    return n * p - z * sd, n * p + z * sd


# ------------------------------------------------------------------------------------ bootstrap_ci
def test_constant_sample_gives_zero_width():
    assert bootstrap_ci([np.full(50, 0.3), np.full(50, 0.3), np.full(50, 0.3)]) == (0.3, 0.3, 0.3)
    assert bootstrap_ci([np.full(7, 0.1), np.full(9, 0.1)]) == (0.1, 0.1, 0.1)     # unequal sizes too


def test_item_bootstrap_covers_the_true_mean_about_95_percent():
    """One seed: the plain percentile bootstrap of a normal mean covers mu in ~95 % of trials."""
    mu, trials, covered = 1.5, 200, 0
    for t in range(trials):
        sample = np.random.default_rng(1000 + t).normal(mu, 2.0, size=100)
        _, lo, hi = bootstrap_ci([sample], n_boot=1000, seed=t)
        covered += lo <= mu <= hi
    low, high = _binomial_band(trials, 0.95)
    # (the percentile interval of a mean runs slightly narrow at n=100, ~94 %: well inside the band)
    assert low <= covered <= min(high, trials), f"covered {covered}/{trials}"


def test_hierarchical_interval_includes_seed_variance():
    """Seeds that differ (a random effect per seed) widen the interval far beyond the item bootstrap's."""
    rng = np.random.default_rng(0)
    seed_effects = [-0.5, 0.0, 0.6]
    by_seed = [rng.normal(e, 0.2, size=256) for e in seed_effects]
    est, lo, hi = bootstrap_ci(by_seed)
    _, ilo, ihi = bootstrap_ci([np.concatenate(by_seed)])        # pooled as if one seed: items only
    assert est == pytest.approx(np.mean(np.concatenate(by_seed)))
    assert (hi - lo) > 5 * (ihi - ilo)
    assert lo < est < hi


def test_estimate_is_the_pooled_statistic_and_any_stat_works():
    rng = np.random.default_rng(1)
    by_seed = [rng.exponential(size=64) for _ in range(3)]
    est, lo, hi = bootstrap_ci(by_seed, stat=np.median)
    assert est == pytest.approx(np.median(np.concatenate(by_seed)))
    assert lo <= est <= hi
    # a statistic without an axis argument runs row by row and gives the same answer as its numpy twin
    slow = bootstrap_ci(by_seed, stat=lambda x: float(np.mean(x)), n_boot=300, seed=4)
    fast = bootstrap_ci(by_seed, n_boot=300, seed=4)
    assert slow == pytest.approx(fast, abs=1e-12)


def test_level_changes_width():
    rng = np.random.default_rng(2)
    by_seed = [rng.normal(size=128) for _ in range(3)]
    _, lo90, hi90 = bootstrap_ci(by_seed, level=0.90)
    _, lo99, hi99 = bootstrap_ci(by_seed, level=0.99)
    assert lo99 < lo90 and hi90 < hi99


def test_deterministic_given_seed():
    rng = np.random.default_rng(3)
    by_seed = [rng.normal(size=256) for _ in range(3)]
    assert bootstrap_ci(by_seed, seed=7) == bootstrap_ci(by_seed, seed=7)
    assert bootstrap_ci(by_seed, seed=7) != bootstrap_ci(by_seed, seed=8)
    uneven = [by_seed[0], by_seed[1][:100]]
    assert bootstrap_ci(uneven, seed=7) == bootstrap_ci(uneven, seed=7)
    assert paired_diff_ci(by_seed, by_seed[::-1], seed=1) == paired_diff_ci(by_seed, by_seed[::-1], seed=1)


def test_one_seed_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="rlfl.compare_stats"):
        bootstrap_ci([np.arange(10.0)])
    assert "ignores seed-to-seed variance" in caplog.text


@pytest.mark.parametrize("bad, match", [
    ([], "no seeds"),
    ([np.array([])], r"values_by_seed\[0\]: expected a non-empty 1-D array"),
    ([np.ones(3), np.ones((2, 2))], r"values_by_seed\[1\]: expected a non-empty 1-D array .*got shape \(2, 2\)"),
    ([np.array([1.0, np.nan, 2.0])], r"values_by_seed\[0\]: 1 of 3 values are NaN or infinite"),
    (np.ones(5), "one array per seed"),
])
def test_bad_input_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(bad)


def test_bad_level_and_n_boot():
    with pytest.raises(ValueError, match="level=95"):
        bootstrap_ci([np.ones(3)], level=95)
    with pytest.raises(ValueError, match="n_boot=0"):
        bootstrap_ci([np.ones(3)], n_boot=0)


# ------------------------------------------------------------------------------------ paired_diff_ci
def test_paired_ci_above_zero_when_better_on_every_item():
    rng = np.random.default_rng(5)
    # prompt difficulty varies a lot (sd 1) and is shared; a beats b by 0.05-0.15 on every single prompt
    base = [rng.normal(0, 1.0, size=64) for _ in range(3)]
    a = [x + rng.uniform(0.05, 0.15, size=64) for x in base]
    est, lo, hi = paired_diff_ci(a, base)
    assert 0.05 < lo <= est <= hi < 0.15
    # unpaired, the same data give intervals that overlap heavily: pairing is what finds the difference
    _, alo, _ = bootstrap_ci(a)
    _, _, bhi = bootstrap_ci(base)
    assert alo < bhi


def test_paired_ci_of_a_policy_with_itself_is_zero():
    x = [np.random.default_rng(6).normal(size=32)]
    assert paired_diff_ci(x, x) == (0.0, 0.0, 0.0)


def test_paired_mismatch_names_the_seed():
    with pytest.raises(ValueError, match="seed 1 has 10 values for a and 9 for b; score both policies on the same"):
        paired_diff_ci([np.ones(10), np.ones(10)], [np.ones(10), np.ones(9)])
    with pytest.raises(ValueError, match="a has 2 seeds and b has 1"):
        paired_diff_ci([np.ones(10), np.ones(10)], [np.ones(10)])


def test_vectorised_bootstrap_matches_a_loop():
    """The one-gather path draws exactly the replicates the definition describes (seeds, then items)."""
    rng = np.random.default_rng(7)
    by_seed = [rng.normal(size=256) for _ in range(3)]
    _, lo, hi = bootstrap_ci(by_seed, n_boot=2000)
    # the same replicates drawn by hand, one at a time
    g = np.random.default_rng(0)
    picked = g.integers(0, 3, size=(2000, 3))
    items = g.integers(0, 256, size=(2000, 3, 256))
    boots = [np.mean(np.concatenate([by_seed[s][items[b, j]] for j, s in enumerate(picked[b])]))
             for b in range(2000)]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(boots, [0.025, 0.975])), abs=1e-12)


# ------------------------------------------------------------------------------------ win rate, distinct-n
def test_win_rate_counts_ties_half():
    assert win_rate(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 2.0, 5.0, 1.0])) == 0.625
    assert win_rate([1.0, 1.0 + 1e-12], [1.0, 1.0]) == 0.5                         # within tie_eps
    assert win_rate([1.0, 1.1], [1.0, 1.0], tie_eps=0.2) == 0.5
    assert win_rate([3.0], [2.0]) == 1.0 and win_rate([2.0], [3.0]) == 0.0


def test_win_rate_errors():
    with pytest.raises(ValueError, match=r"scores_a has shape \(3,\) and scores_b \(2,\)"):
        win_rate(np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="no scores"):
        win_rate([], [])


def test_distinct_n_tiny_example():
    texts = ["the cat sat", "the cat ran", "ok"]
    # unigrams: the cat sat the cat ran ok -> 7 total, 5 distinct
    assert distinct_n(texts, 1) == pytest.approx(5 / 7)
    # bigrams: (the cat) (cat sat) (the cat) (cat ran) -> 4 total, 3 distinct ("ok" has none; none span texts)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["a a a a"], 1) == 0.25 and distinct_n(["a b"], 3) == 0.0 and distinct_n([], 1) == 0.0
    with pytest.raises(ValueError, match="n=0"):
        distinct_n(texts, 0)


# ------------------------------------------------------------------------------------ agreement
def test_kappa_hand_worked_example():
    # 10 items, skips dropped. Table (x rows, y cols) over a/b/tie after dropping 2 skipped items:
    #        a  b  tie
    #   a    3  1  0      x: a 4, b 3, tie 1  -> p 0.5, 0.375, 0.125
    #   b    0  2  1      y: a 3, b 4, tie 1  -> p 0.375, 0.5, 0.125
    #   tie  0  1  0
    # p_o = 5/8 = 0.625; p_e = 0.5*0.375 + 0.375*0.5 + 0.125*0.125 = 0.390625
    # kappa = (0.625 - 0.390625) / (1 - 0.390625) = 0.234375 / 0.609375 = 0.384615...
    x = ["a", "a", "a", "a", "b", "b", "b", "tie", "skip", "a"]
    y = ["a", "a", "a", "b", "b", "b", "tie", "b", "a", "skip"]
    out = agreement(x, y)
    assert out["n"] == 8 and out["raw"] == 0.625
    assert out["kappa"] == pytest.approx(0.234375 / 0.609375)


def test_kappa_extremes():
    assert agreement(["a", "b", "tie"], ["a", "b", "tie"]) == {"n": 3, "raw": 1.0, "kappa": 1.0}
    assert agreement(["a", "a"], ["a", "a"]) == {"n": 2, "raw": 1.0, "kappa": None}     # undefined: one label
    assert agreement(["skip"], ["a"]) == {"n": 0, "raw": None, "kappa": None}
    assert agreement(["a", "b"], ["b", "a"])["kappa"] == pytest.approx(-1.0)


def test_agreement_errors():
    with pytest.raises(ValueError, match="2 labels in labels_x but 1 in labels_y"):
        agreement(["a", "b"], ["a"])
    with pytest.raises(ValueError, match=r"labels_y\[1\] is 'left'; labels must be one of a, b, tie, skip"):
        agreement(["a", "b"], ["a", "left"])


# ------------------------------------------------------------------------------------ formatting
def test_round_floats_makes_plain_stable_json():
    tree = {"ci": (np.float64(0.1) + np.float64(0.2), np.float32(1 / 3), -1e-9), "n": np.int64(3),
            "ok": np.bool_(True), "nan": float("nan"), "arr": np.array([0.1234567, 2.0]), "s": "x",
            "nested": [{"inf": np.inf}], 0: 1.0}
    out = round_floats(tree)
    assert out == {"ci": [0.3, 0.333333, 0.0], "n": 3, "ok": True, "nan": None, "arr": [0.123457, 2.0],
                   "s": "x", "nested": [{"inf": None}], 0: 1.0}
    assert type(out["n"]) is int and type(out["ok"]) is bool
    text = json.dumps(out)
    assert "-0.0" not in text and "NaN" not in text
    # two sums that differ in the last bits write the same bytes
    assert json.dumps(round_floats(0.1 + 0.2 + 0.3)) == json.dumps(round_floats(0.3 + 0.2 + 0.1))


def test_format_ci():
    assert format_ci((0.812, 0.76, 0.861)) == "0.81 [0.76, 0.86]"
    assert format_ci([0.8123, 0.7601, 0.8612], 3) == "0.812 [0.760, 0.861]"
    assert format_ci([0.5, None, None]) == "0.50"
    assert format_ci(None) == "n/a" and format_ci([None, None, None]) == "n/a"
    with pytest.raises(ValueError, match="expected \\(estimate, low, high\\), got 2 values"):
        format_ci([0.1, 0.2])
