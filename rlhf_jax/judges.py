"""Gold judges: reward functions nobody on this project wrote, run on the host.

VADER (Hutto & Gilbert 2014; PyPI `vaderSentiment`, which ships its lexicon) scores the
sentiment of decoded text: the compound score in [-1, 1]. It labels the synthetic
preference pairs and measures what RL really changed, while the policy optimises a
learned proxy (the set-up of Gao et al. 2022 and of the DPO paper's sentiment experiment).
"""

import functools

import numpy as np

from rlhf_jax.errors import UserError


@functools.lru_cache(maxsize=1)
def _vader():
  try:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("the sentiment judge needs vaderSentiment: pip install vaderSentiment") from None
  return SentimentIntensityAnalyzer()


def vader_scores(texts) -> np.ndarray:
  """Compound sentiment of each text, float32 in [-1, 1] (0 for empty text)."""
  analyzer = _vader()
  return np.array([analyzer.polarity_scores(t)["compound"] if t.strip() else 0.0 for t in texts], np.float32)


JUDGES = {"vader": vader_scores}


def get_judge(name: str):
  if name not in JUDGES:
    raise UserError(f"unknown gold judge {name!r}: choose one of {sorted(JUDGES)}")
  return JUDGES[name]
