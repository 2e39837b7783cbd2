"""Gao et al.'s functional forms, fitted on synthetic data with known coefficients."""

import numpy as np
import pytest

from rlhf_jax import fits


@pytest.mark.parametrize("form, alpha, beta", [("rl", 0.8, 0.3), ("best_of_n", 0.6, 0.15)])
def test_fits_recover_known_coefficients_and_peaks(form, alpha, beta):
  kl = np.linspace(0.01, 16.0, 40)
  d = np.sqrt(kl)
  truth = fits.Fit(form, alpha, beta, 0.0)
  exact = fits.fit(form, kl, truth(d))
  assert (exact.alpha, exact.beta) == pytest.approx((alpha, beta), abs=1e-9) and exact.rmse < 1e-9
  noisy = fits.fit(form, kl, truth(d) + np.random.default_rng(0).normal(0, 0.01, len(d)))
  assert (noisy.alpha, noisy.beta) == pytest.approx((alpha, beta), abs=0.03) and 0.005 < noisy.rmse < 0.02
  peak = truth.peak()
  grid = np.linspace(0.01, 10 * peak, 100001)
  assert peak == pytest.approx(grid[np.argmax(truth(grid))], rel=1e-3)  # the fitted gold's maximum


def test_a_curve_that_never_turns_down_has_no_peak_and_bad_input_is_refused():
  kl = np.array([0.5, 1.0, 4.0, 9.0])
  rising = fits.fit("best_of_n", kl, 0.5 * np.sqrt(kl))
  assert rising.beta == pytest.approx(0.0, abs=1e-9) and (rising.peak() is None or rising.peak() > 1e6)
  with pytest.raises(ValueError, match="choose one of rl, best_of_n"):
    fits.fit("linear", kl, kl)
  with pytest.raises(ValueError, match="at least two points"):
    fits.fit("rl", [1.0], [0.1])
