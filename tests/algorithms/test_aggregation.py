"""Loss aggregations: the weights each gives a hand-made mask, and the earlier names."""

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms import aggregation

MASK = jnp.array([[1, 1, 1, 1, 0], [1, 0, 0, 0, 0]])  # responses of 4 and 1 tokens, budget 5


def test_each_aggregation_weights_tokens_as_named():
  weights = lambda name: np.asarray(aggregation.token_weights(MASK, name, max_len=5))
  np.testing.assert_allclose(weights("token_mean")[:, 0], [1 / 5, 1 / 5])  # 5 tokens in all
  np.testing.assert_allclose(weights("seq_mean_token_mean")[:, 0], [1 / 8, 1 / 2])  # (1/2) x (1/4), (1/2) x 1
  np.testing.assert_allclose(weights("seq_mean_token_sum")[:, 0], [1 / 2, 1 / 2])  # -A sum_t log p, averaged
  # Dr. GRPO: one constant, rows x budget = 10, for every token of every response.
  np.testing.assert_allclose(weights("constant")[:, 0], [1 / 10, 1 / 10])
  for name in ("token_mean", "seq_mean_token_mean"):
    np.testing.assert_allclose(weights(name).sum(), 1.0, rtol=1e-6)
  for name in aggregation.LOSS_AGGREGATIONS:
    assert weights(name)[0, 4] == 0.0 and weights(name)[1, 1] == 0.0


def test_microbatch_weights_add_up_to_the_minibatchs():
  # Weights are computed on the whole minibatch, then split: the split sums equal the whole sum.
  losses = jnp.arange(10.0).reshape(2, 5)
  for name in aggregation.LOSS_AGGREGATIONS:
    w = aggregation.token_weights(MASK, name, max_len=5)
    np.testing.assert_allclose(jnp.sum(w[:1] * losses[:1]) + jnp.sum(w[1:] * losses[1:]), jnp.sum(w * losses))


def test_earlier_names_still_work_and_unknown_ones_are_listed():
  for old, new in aggregation.ALIASES.items():
    np.testing.assert_array_equal(aggregation.token_weights(MASK, old), aggregation.token_weights(MASK, new))
  with pytest.raises(ValueError, match="choose one of token_mean, seq_mean_token_mean"):
    aggregation.token_weights(MASK, "median")
