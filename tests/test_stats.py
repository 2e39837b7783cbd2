"""Bootstrap intervals over seeds."""

import numpy as np

from rlhf_jax import stats


def test_two_seeds_give_the_interval_between_them_and_one_seed_gives_none():
  # Resampling two values gives means a, (a + b) / 2 and b with probabilities 1/4, 1/2, 1/4:
  # the 2.5th and 97.5th percentiles are the values themselves.
  estimate = stats.bootstrap_mean([0.2, 0.6])
  assert estimate.mean == 0.4 and (estimate.low, estimate.high) == (0.2, 0.6) and estimate.n == 2
  assert str(estimate) == "0.400 [0.200, 0.600]"
  assert stats.bootstrap_mean([0.5, None, float("nan")]) == stats.Estimate(0.5, None, None, 1)
  assert str(stats.bootstrap_mean([0.5])) == "0.500" and str(stats.bootstrap_mean([])) == "-"


def test_intervals_are_reproducible_cover_the_mean_and_narrow_with_more_seeds():
  few = np.array([0.4, 0.5, 0.6])
  assert stats.bootstrap_mean(few) == stats.bootstrap_mean(few)  # fixed-seeded
  width = lambda e: e.high - e.low
  assert width(stats.bootstrap_mean(np.tile(few, 10))) < width(stats.bootstrap_mean(few))  # the same spread, 30 seeds
  many = np.random.default_rng(1).normal(0.5, 0.1, 30)
  for values in (few, many):
    e = stats.bootstrap_mean(values)
    assert e.low < e.mean < e.high
  # 30 seeds: close to the normal interval, mean +- 1.96 standard errors.
  se = many.std(ddof=1) / np.sqrt(len(many))
  assert abs(width(stats.bootstrap_mean(many)) - 2 * 1.96 * se) < 0.3 * 2 * 1.96 * se


def test_a_difference_is_centred_on_the_means_difference_and_spans_zero_for_equal_groups():
  a, b = [0.7, 0.72, 0.69, 0.71], [0.5, 0.52, 0.49, 0.51]
  d = stats.bootstrap_difference(a, b)
  assert d.mean == np.mean(a) - np.mean(b) and 0.0 < d.low < d.mean < d.high and d.n == 4
  same = stats.bootstrap_difference([0.5, 0.6, 0.55], [0.52, 0.58, 0.56])
  assert same.low < 0 < same.high
  assert stats.bootstrap_difference([0.7], [0.5, 0.6]).low is None
