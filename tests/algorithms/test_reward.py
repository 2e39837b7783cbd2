"""Bradley-Terry loss and reward-model metrics against the published worked values and hand cases."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from rlhf_jax.algorithms.reward import bradley_terry_loss, normalisation, preference_metrics


def test_worked_values_from_the_references():
  np.testing.assert_allclose(bradley_terry_loss(jnp.array([2.0]), jnp.array([0.0])), 0.127, atol=5e-4)
  # REFERENCES.md rounds this one to 2.128, but log(1 + e^2) = 2.12693, i.e. 2.127 to 3 decimals.
  np.testing.assert_allclose(bradley_terry_loss(jnp.array([0.0]), jnp.array([2.0])), 2.127, atol=5e-4)
  # The batch loss is the mean of the per-pair losses.
  np.testing.assert_allclose(bradley_terry_loss(jnp.array([2.0, 0.0]), jnp.array([0.0, 2.0])),
                             (0.126928 + 2.126928) / 2, rtol=1e-5)


def test_depends_on_the_difference_only_and_is_symmetric():
  chosen, rejected = np.random.default_rng(0).normal(size=(2, 16)).astype(np.float32)
  loss = bradley_terry_loss(chosen, rejected)
  np.testing.assert_allclose(bradley_terry_loss(chosen + 3.0, rejected + 3.0), loss, rtol=1e-5)
  # -log s(d) - (-log s(-d)) = -d, so swapping the pair shifts the loss by the mean difference.
  swapped = bradley_terry_loss(rejected, chosen)
  np.testing.assert_allclose(swapped - loss, jnp.mean(chosen - rejected), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(bradley_terry_loss(jnp.zeros(4), jnp.zeros(4)), np.log(2), rtol=1e-6)


def test_stable_for_large_differences():
  loss = bradley_terry_loss(jnp.array([-200.0]), jnp.array([0.0]))
  np.testing.assert_allclose(loss, 200.0, rtol=1e-6)
  assert float(bradley_terry_loss(jnp.array([200.0]), jnp.array([0.0]))) >= 0.0


def test_gradient_raises_the_chosen_reward_and_lowers_the_rejected():
  chosen, rejected = jnp.array([0.5, -1.0, 2.0]), jnp.array([1.0, -1.0, 0.0])
  g_chosen, g_rejected = jax.grad(bradley_terry_loss, argnums=(0, 1))(chosen, rejected)
  assert np.all(np.asarray(g_chosen) < 0) and np.all(np.asarray(g_rejected) > 0)
  # d/dr_w of -log s(r_w - r_l) / B is -(1 - s(r_w - r_l)) / B.
  np.testing.assert_allclose(g_chosen, -(1 - jax.nn.sigmoid(chosen - rejected)) / 3, rtol=1e-5)
  np.testing.assert_allclose(g_rejected, -g_chosen, rtol=1e-6)
  check_grads(jax.jit(bradley_terry_loss), (chosen, rejected), order=1, modes=("fwd", "rev"), eps=1e-2,
              atol=1e-2, rtol=1e-2)


def test_metrics_on_a_hand_case():
  chosen, rejected = jnp.array([1.0, 0.0, 2.0, 3.0]), jnp.array([0.0, 1.0, 2.0, 1.0])
  metrics = preference_metrics(chosen, rejected)
  assert float(metrics["accuracy"]) == 0.625  # right, wrong, tie, right -> (1 + 0 + 0.5 + 1) / 4
  np.testing.assert_allclose(metrics["margin"], (1 - 1 + 0 + 2) / 4, rtol=1e-6)
  np.testing.assert_allclose(metrics["loss"], bradley_terry_loss(chosen, rejected), rtol=1e-6)
  assert all(jnp.shape(v) == () for v in metrics.values())


def test_normalisation_gives_mean_zero_std_one():
  rewards = 3.0 + 2.5 * np.random.default_rng(1).normal(size=(512,)).astype(np.float32)
  gain, bias = normalisation(rewards)
  normalised = gain * rewards + bias
  np.testing.assert_allclose(jnp.mean(normalised), 0.0, atol=1e-5)
  np.testing.assert_allclose(jnp.std(normalised), 1.0, rtol=1e-5)
  gain, bias = normalisation(jnp.full((8,), 4.0))  # a constant RM: finite, maps to 0
  assert np.isfinite(float(gain)) and np.isfinite(float(bias))
  np.testing.assert_allclose(gain * 4.0 + bias, 0.0, atol=1e-3)
  gain, bias = jax.jit(normalisation)(rewards)
  np.testing.assert_allclose(jnp.std(gain * rewards + bias), 1.0, rtol=1e-5)


def test_a_soft_label_is_the_cross_entropy_against_the_judges_probability():
  diff = jnp.array([2.0, 0.0, -1.0])
  label = jnp.array([0.8, 0.5, 1.0])
  expected = -(label * jax.nn.log_sigmoid(diff) + (1 - label) * jax.nn.log_sigmoid(-diff))
  np.testing.assert_allclose(bradley_terry_loss(diff, jnp.zeros(3), label), expected.mean(), rtol=1e-6)
  np.testing.assert_allclose(bradley_terry_loss(jnp.zeros(1), jnp.zeros(1), 0.5), np.log(2.0), rtol=1e-6)
  # A label of 1 is the hard label's loss; the soft loss is smallest where sigmoid(diff) = label.
  np.testing.assert_allclose(bradley_terry_loss(diff, jnp.zeros(3), 1.0), bradley_terry_loss(diff, jnp.zeros(3)))
  grid = jnp.linspace(-4, 4, 801)
  losses = jax.vmap(lambda d: bradley_terry_loss(d[None], jnp.zeros(1), 0.8))(grid)
  assert abs(float(jax.nn.sigmoid(grid[jnp.argmin(losses)])) - 0.8) < 0.01
