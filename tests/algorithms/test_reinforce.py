"""Critic-free advantage estimators on hand-worked groups, and REINFORCE++'s token returns."""

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms import reinforce


def test_rloo_baseline_excludes_the_sample_itself():
  # Two prompts, k = 3. Prompt 0: 1, 2, 6 -> 1 - (2 + 6) / 2 = -3, 2 - 3.5 = -1.5, 6 - 1.5 = 4.5.
  returns = jnp.array([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
  np.testing.assert_allclose(reinforce.rloo_advantages(returns, 3), [-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])
  # Equivalently k / (k - 1) times the deviation from the group mean; a constant group gets 0.
  np.testing.assert_allclose(reinforce.rloo_advantages(jnp.full((4,), 7.0), 2), np.zeros(4))


def test_grpo_normalises_within_each_group():
  returns = jnp.array([1.0, 3.0, 10.0, 10.0, 20.0, 30.0])
  advantages = np.asarray(reinforce.grpo_advantages(returns, 3, eps=0.0))
  # Group 0: mean 14/3, unbiased std of (1, 3, 10) = sqrt(22.33...) = 4.726.
  group = np.array([1.0, 3.0, 10.0])
  np.testing.assert_allclose(advantages[:3], (group - group.mean()) / group.std(ddof=1), rtol=1e-5)
  # Group 1: mean 20, std 10 -> -1, 0, 1. Each group is centred and scaled by itself only.
  np.testing.assert_allclose(advantages[3:], [-1.0, 0.0, 1.0], rtol=1e-5)
  unscaled = reinforce.grpo_advantages(returns, 3, scale_by_std=False)
  np.testing.assert_allclose(unscaled[3:], [-10.0, 0.0, 10.0], rtol=1e-6)


def test_grouped_estimators_need_whole_groups_of_two_or_more():
  with pytest.raises(ValueError, match="at least 2"):
    reinforce.rloo_advantages(jnp.ones(4), 1)
  with pytest.raises(ValueError, match="groups of 3"):
    reinforce.grpo_advantages(jnp.ones(4), 3)


def test_moving_average_baseline_uses_the_previous_batches():
  advantages, baseline = reinforce.moving_average_baseline(jnp.array([1.0, 3.0]), jnp.float32(4.0), decay=0.9)
  np.testing.assert_allclose(advantages, [-3.0, -1.0])  # centred by the old baseline, 4
  np.testing.assert_allclose(baseline, 0.9 * 4.0 + 0.1 * 2.0, rtol=1e-6)


def test_remax_subtracts_the_greedy_return():
  np.testing.assert_allclose(reinforce.remax_advantages(jnp.array([1.0, 0.5]), jnp.array([0.2, 0.5])), [0.8, 0.0])


def test_token_returns_sum_the_rewards_to_come_within_each_response():
  rewards = jnp.array([[0.0, 1.0, 2.0, 3.0, 9.0], [5.0, -1.0, 0.0, 0.0, 0.0]])
  mask = jnp.array([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]])  # padding on both sides; its 9 must not count
  np.testing.assert_allclose(reinforce.token_returns(rewards, mask), [[0, 6, 5, 3, 0], [4, -1, 0, 0, 0]])
  discounted = reinforce.token_returns(rewards, mask, gamma=0.5)[0]
  np.testing.assert_allclose(discounted, [0, 1 + 1 + 0.75, 2 + 1.5, 3, 0])
