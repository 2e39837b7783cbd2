"""DAPO's overlong penalty and dynamic-sampling weights on hand-worked lengths and groups."""

import jax.numpy as jnp
import numpy as np

from rlhf_jax.algorithms import shaping


def test_overlong_penalty_is_0_then_falls_linearly_to_minus_1_at_the_budget():
  # Budget 100, buffer 20: free up to 80, then ((100 - 20) - |y|) / 20.
  lengths = jnp.array([10, 80, 81, 90, 100])
  np.testing.assert_allclose(shaping.overlong_penalty(lengths, 100, 20), [0, 0, -0.05, -0.5, -1.0], rtol=1e-6)
  np.testing.assert_allclose(shaping.overlong_penalty(lengths, 100, 20, factor=2.0)[-1], -2.0)
  np.testing.assert_array_equal(shaping.overlong_penalty(lengths, 100, 0), np.zeros(5))


def test_groups_whose_rewards_are_all_equal_get_weight_0():
  rewards = jnp.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5])  # k = 3: all right, mixed, all equal
  np.testing.assert_array_equal(shaping.informative_groups(rewards, 3), [0, 0, 0, 1, 1, 1, 0, 0, 0])


def test_select_groups_keeps_informative_groups_first_in_draw_order_then_fills():
  # k = 2, 5 groups drawn: 0 uninformative, 1 informative, 2 uninformative, 3 and 4 informative.
  weights = jnp.array([0, 0, 1, 1, 0, 0, 1, 1, 1, 1], jnp.float32)
  np.testing.assert_array_equal(shaping.select_groups(weights, 2, keep=3), [2, 3, 6, 7, 8, 9])
  # Only 3 informative: keeping 4 refills with the first uninformative group drawn.
  np.testing.assert_array_equal(shaping.select_groups(weights, 2, keep=4), [2, 3, 6, 7, 8, 9, 0, 1])
  np.testing.assert_array_equal(shaping.select_groups(jnp.ones(4), 2, keep=2), [0, 1, 2, 3])
