"""Gao et al. 2022's functional forms for gold reward against the distance from the initial
policy, d = sqrt(KL), fitted by least squares (both are linear in alpha and beta):

  RL:         R(d) = d (alpha - beta log d)
  best-of-n:  R(d) = d (alpha - beta d)

R is the gold reward's gain over the initial (SFT) policy, so R(0) = 0. A positive beta bends
the curve down: gold rises, peaks (RL at d = exp(alpha / beta - 1), best-of-n at
d = alpha / (2 beta)) and falls, while the proxy goes on rising: over-optimisation.
"""

from typing import NamedTuple

import numpy as np

FEATURES = {"rl": lambda d: np.stack([d, -d * np.log(np.maximum(d, 1e-12))], 1),
            "best_of_n": lambda d: np.stack([d, -d * d], 1)}


class Fit(NamedTuple):
  form: str  # "rl" or "best_of_n"
  alpha: float
  beta: float
  rmse: float  # of the fit on its points

  def __call__(self, d):
    d = np.asarray(d, float)
    return FEATURES[self.form](d) @ np.array([self.alpha, self.beta])

  def peak(self) -> float | None:
    """The d at which the fitted gold is highest (None when beta <= 0: it never turns down)."""
    if self.beta <= 0:
      return None
    return float(np.exp(self.alpha / self.beta - 1)) if self.form == "rl" else self.alpha / (2 * self.beta)


def fit(form: str, kl, gain) -> Fit:
  """Least-squares (alpha, beta) of `form` to gold gains over the initial policy at these KLs."""
  if form not in FEATURES:
    raise ValueError(f"form={form!r}: choose one of {', '.join(FEATURES)}")
  d, gain = np.sqrt(np.maximum(np.asarray(kl, float), 0.0)), np.asarray(gain, float)
  if len(d) < 2:
    raise ValueError("a fit needs at least two points")
  (alpha, beta), *_ = np.linalg.lstsq(FEATURES[form](d), gain, rcond=None)
  result = Fit(form, float(alpha), float(beta), 0.0)
  return result._replace(rmse=float(np.sqrt(np.mean((result(d) - gain) ** 2))))
