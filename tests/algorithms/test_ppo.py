"""PPO's clipped objective and surrogate on the worked values and hand cases, whitening, entropy,
explained variance."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from rlhf_jax.algorithms import ppo
from rlhf_jax.algorithms.aggregation import token_weights
from rlhf_jax.algorithms.masked import masked_mean, masked_var
from rlhf_jax.algorithms.policy_losses import PolicyLossParams, surrogate_loss
from rlhf_jax.algorithms.ppo import clipped_objective
from rlhf_jax.models import logits


def mean_of(mask):
  """Weights that make the losses token means over the mask."""
  return token_weights(jnp.asarray(mask), "token_mean")


@jax.jit
def clipped_surrogate_loss(logprobs, old_logprobs, advantages, weights, clip_eps=0.2, metric_weights=None):
  """PPO's clipped surrogate: policy_losses' `clip` with a symmetric range."""
  metric_weights = weights if metric_weights is None else metric_weights
  return surrogate_loss("clip", logprobs, old_logprobs, advantages, weights, metric_weights,
                        PolicyLossParams(clip_eps, clip_eps))

# Jitted, as the trainer calls them: this checks they trace, and one compile per shape is much
# faster than eager mode's one per op.
clipped_value_loss = jax.jit(ppo.clipped_value_loss)
entropy_from_logits = jax.jit(logits.entropy_from_logits)
explained_variance = jax.jit(ppo.explained_variance)
whiten = jax.jit(ppo.whiten, static_argnames="shift_mean")


def test_clipped_objective_worked_values():
  np.testing.assert_allclose(clipped_objective(jnp.array(1.5), jnp.array(2.0), 0.2), 2.4, rtol=1e-6)
  np.testing.assert_allclose(clipped_objective(jnp.array(0.5), jnp.array(-1.0), 0.2), -0.8, rtol=1e-6)
  # Unclipped inside the trust region, and the pessimistic branch outside it.
  np.testing.assert_allclose(clipped_objective(jnp.array(1.1), jnp.array(2.0), 0.2), 2.2, rtol=1e-6)
  np.testing.assert_allclose(clipped_objective(jnp.array(0.5), jnp.array(2.0), 0.2), 1.0, rtol=1e-6)
  np.testing.assert_allclose(clipped_objective(jnp.array(1.5), jnp.array(-1.0), 0.2), -1.5, rtol=1e-6)


def hand_case():
  # ratios 1.5, 0.5, 1.1, 0.5, 1.5 and a padded token; the first two are clipped, the rest are not.
  ratios = np.array([[1.5, 0.5, 1.1], [0.5, 1.5, 3.0]], np.float32)
  old_logprobs = jnp.full((2, 3), -1.0)
  logprobs = old_logprobs + jnp.log(ratios)
  advantages = jnp.array([[2.0, -1.0, 2.0], [2.0, -1.0, 5.0]])
  mask = jnp.array([[1, 1, 1], [1, 1, 0]])
  return logprobs, old_logprobs, advantages, mask


def test_surrogate_loss_and_metrics_on_a_hand_case():
  logprobs, old_logprobs, advantages, mask = hand_case()
  loss, metrics = clipped_surrogate_loss(logprobs, old_logprobs, advantages, mean_of(mask), clip_eps=0.2)
  np.testing.assert_allclose(loss, -(2.4 - 0.8 + 2.2 + 1.0 - 1.5) / 5, rtol=1e-5)
  np.testing.assert_allclose(metrics["clip_fraction"], 2 / 5, rtol=1e-6)
  np.testing.assert_allclose(metrics["ratio"], (1.5 + 0.5 + 1.1 + 0.5 + 1.5) / 5, rtol=1e-5)
  log_ratios = np.log([1.5, 0.5, 1.1, 0.5, 1.5])
  np.testing.assert_allclose(metrics["approx_kl"], np.mean(0.5 * log_ratios ** 2), rtol=1e-5)


def test_metrics_are_fractions_and_means_whatever_the_loss_reduction():
  # REINFORCE sums each response's tokens: its weights (mask / rows) sum to the mean response
  # length, 2.5, so metrics weighted alike would count clipped tokens per response (1.0), not
  # their fraction (2 / 5).
  logprobs, old_logprobs, advantages, mask = hand_case()
  summed = mask / mask.shape[0]
  loss, metrics = clipped_surrogate_loss(logprobs, old_logprobs, advantages, summed, clip_eps=0.2,
                                         metric_weights=mean_of(mask))
  np.testing.assert_allclose(loss, -(2.4 - 0.8 + 2.2 + 1.0 - 1.5) / 2, rtol=1e-5)
  np.testing.assert_allclose(metrics["clip_fraction"], 2 / 5, rtol=1e-6)
  np.testing.assert_allclose(metrics["ratio"], (1.5 + 0.5 + 1.1 + 0.5 + 1.5) / 5, rtol=1e-5)


def test_clipped_and_padded_tokens_get_no_gradient():
  logprobs, old_logprobs, advantages, mask = hand_case()
  grads = jax.grad(lambda lp: clipped_surrogate_loss(lp, old_logprobs, advantages, mean_of(mask), clip_eps=0.2)[0])
  g = np.asarray(grads(logprobs))
  assert g[0, 0] == 0 and g[0, 1] == 0 and g[1, 2] == 0
  # Elsewhere d(-rho A / n)/d logp = -rho A / n.
  np.testing.assert_allclose(g[[0, 1, 1], [2, 0, 1]], [-1.1 * 2 / 5, -0.5 * 2 / 5, 1.5 / 5], rtol=1e-5)


def test_surrogate_at_the_old_policy_is_the_mean_advantage():
  advantages = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
  logprobs = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
  mask = jnp.ones((3, 8)).at[:, :2].set(0)
  loss, metrics = clipped_surrogate_loss(logprobs, logprobs, advantages, mean_of(mask), clip_eps=0.2)
  np.testing.assert_allclose(loss, -masked_mean(advantages, mask), rtol=1e-5)
  assert float(metrics["clip_fraction"]) == 0.0 and float(metrics["approx_kl"]) == 0.0


def test_whiten_uses_only_valid_entries():
  x = np.random.default_rng(2).normal(size=(4, 10)).astype(np.float32) * 3.0 + 5.0
  mask = jnp.ones((4, 10)).at[0, :3].set(0).at[2, 6:].set(0)
  garbage = jnp.where(mask > 0, x, 1e6)
  whitened = whiten(garbage, mask)
  np.testing.assert_allclose(masked_mean(whitened, mask), 0.0, atol=1e-5)
  np.testing.assert_allclose(masked_var(whitened, mask), 1.0, rtol=1e-4)
  assert np.all(np.asarray(whitened)[np.asarray(mask) == 0] == 0)
  np.testing.assert_allclose(whitened, whiten(x, mask), rtol=1e-5, atol=1e-6)
  kept = whiten(x, mask, shift_mean=False)
  np.testing.assert_allclose(masked_mean(kept, mask), masked_mean(x, mask), rtol=1e-5)
  np.testing.assert_allclose(masked_var(kept, mask), 1.0, rtol=1e-4)


def test_value_loss_on_a_hand_case():
  old = jnp.array([[1.0, 1.0, 1.0, 0.0]])
  values = jnp.array([[1.5, 1.1, 0.0, 9.0]])
  returns = jnp.array([[2.0, 0.0, 0.0, 0.0]])
  mask = jnp.array([[1, 1, 1, 0]])
  loss, metrics = clipped_value_loss(values, old, returns, mean_of(mask), clip=0.2)
  # Token 0: V 1.5 -> clipped 1.2; errors 0.25 vs 0.64, the clipped branch is the max.
  # Token 1: V 1.1 inside the clip; both errors 1.21.  Token 2: V 0 -> clipped 0.8; 0 vs 0.64.
  np.testing.assert_allclose(loss, 0.5 * (0.64 + 1.21 + 0.64) / 3, rtol=1e-5)
  np.testing.assert_allclose(metrics["value_clip_fraction"], 2 / 3, rtol=1e-6)
  np.testing.assert_allclose(metrics["value_loss"], loss)
  grads = np.asarray(jax.grad(lambda v: clipped_value_loss(v, old, returns, mean_of(mask), clip=0.2)[0])(values))
  # Token 0's clipped branch wins and is flat in V; token 3 is padding.
  np.testing.assert_allclose(grads, [[0.0, 1.1 / 3, 0.0, 0.0]], atol=1e-6)


def test_value_loss_with_non_finite_padding_is_finite_with_zero_padding_gradient():
  old = jnp.array([[1.0, 1.0, 1.0, jnp.nan]])
  returns = jnp.array([[2.0, 0.0, 0.0, jnp.inf]])  # a return on padding that a bug left non-finite
  values = jnp.array([[1.5, 1.1, 0.0, -jnp.inf]])
  mask = jnp.array([[1, 1, 1, 0]])
  loss_fn = lambda v: clipped_value_loss(v, old, returns, mean_of(mask), clip=0.2)[0]
  loss, grads = jax.value_and_grad(loss_fn)(values)
  np.testing.assert_allclose(loss, 0.5 * (0.64 + 1.21 + 0.64) / 3, rtol=1e-5)  # as with clean padding
  np.testing.assert_allclose(grads, [[0.0, 1.1 / 3, 0.0, 0.0]], atol=1e-6)


def test_value_loss_gradients_numerically_away_from_the_kinks():
  old = jnp.array([[0.0, 1.0, -1.0]])
  values = jnp.array([[0.05, 1.1, -1.02]])  # all inside the clip, far from both kinks at +-0.2
  returns = jnp.array([[1.0, -1.0, 0.5]])
  mask = jnp.array([[1.0, 1.0, 1.0]])
  loss = jax.jit(lambda v: clipped_value_loss(v, old, returns, mean_of(mask), clip=0.2)[0])
  check_grads(loss, (values,), order=1, modes=("fwd", "rev"), eps=1e-2, atol=1e-2, rtol=1e-2)


def test_entropy_from_logits():
  np.testing.assert_allclose(entropy_from_logits(jnp.zeros((2, 3, 50))), np.full((2, 3), np.log(50)),
                             rtol=1e-6)
  np.testing.assert_allclose(entropy_from_logits(jnp.array([[[1e4, 0.0, 0.0]]])), [[0.0]], atol=1e-6)
  p = np.array([0.5, 0.25, 0.25])
  np.testing.assert_allclose(entropy_from_logits(jnp.log(p)[None, None]), [[-np.sum(p * np.log(p))]],
                             rtol=1e-6)
  # A top-k-filtered row: -inf logits add nothing and leave the gradient finite.
  logits = jnp.array([[[0.0, 0.0, -jnp.inf]]])
  np.testing.assert_allclose(entropy_from_logits(logits), [[np.log(2)]], rtol=1e-6)
  assert np.all(np.isfinite(jax.grad(lambda x: entropy_from_logits(x).sum())(logits)))


def test_explained_variance():
  returns = np.random.default_rng(3).normal(size=(4, 16)).astype(np.float32)
  mask = jnp.ones((4, 16)).at[:, :5].set(0)
  np.testing.assert_allclose(explained_variance(returns, returns, mask), 1.0, rtol=1e-6)
  constant = jnp.full((4, 16), 0.3)
  np.testing.assert_allclose(explained_variance(constant, returns, mask), 0.0, atol=1e-5)
  # Padding must not count: wrong values there change nothing.
  noisy = jnp.where(mask > 0, returns, 100.0)
  np.testing.assert_allclose(explained_variance(noisy, returns, mask), 1.0, rtol=1e-6)
  assert float(explained_variance(constant, jnp.ones((4, 16)), mask)) == 0.0  # Var[R] = 0
