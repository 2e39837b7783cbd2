"""Intervals over seeds: the percentile bootstrap (Efron and Tibshirani 1993), fixed-seeded so a
table is the same every time it is made.

With few seeds (3 to 5) the percentile interval is narrower than it should be (it cannot reach
past the seeds' extremes), so read it as "at least this uncertain"; with one seed there is no
interval at all.
"""

from typing import NamedTuple

import numpy as np

RESAMPLES = 10000
LEVEL = 0.95


class Estimate(NamedTuple):
  mean: float
  low: float | None  # None: one value, no interval
  high: float | None
  n: int

  def __str__(self) -> str:
    if self.n == 0:
      return "-"
    return f"{self.mean:.3f}" if self.low is None else f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _percentiles(resampled: np.ndarray) -> tuple[float, float]:
  tail = 100 * (1 - LEVEL) / 2
  low, high = np.percentile(resampled, [tail, 100 - tail])
  return float(low), float(high)


def _resampled_means(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  return values[rng.integers(0, len(values), (RESAMPLES, len(values)))].mean(1)


def clean(values) -> np.ndarray:
  return np.array([v for v in values if v is not None and np.isfinite(v)], float)


def bootstrap_mean(values, seed: int = 0) -> Estimate:
  """The mean of `values` (None and NaN left out) and its 95% percentile-bootstrap interval."""
  values = clean(values)
  if len(values) < 2:
    return Estimate(float(values[0]) if len(values) else float("nan"), None, None, len(values))
  return Estimate(float(values.mean()), *_percentiles(_resampled_means(values, np.random.default_rng(seed))),
                  len(values))


def bootstrap_difference(a, b, seed: int = 0) -> Estimate:
  """mean(a) - mean(b) of two independent groups, each resampled on its own; n is the smaller size."""
  a, b = clean(a), clean(b)
  if min(len(a), len(b)) < 2:
    mean = float(a.mean() - b.mean()) if len(a) and len(b) else float("nan")
    return Estimate(mean, None, None, min(len(a), len(b)))
  rng = np.random.default_rng(seed)
  differences = _resampled_means(a, rng) - _resampled_means(b, rng)
  return Estimate(float(a.mean() - b.mean()), *_percentiles(differences), min(len(a), len(b)))
