"""Policy losses on hand-worked tokens, each against its paper's formula, and padding that holds
sentinels (-inf, -1e9, NaN) giving finite losses and exactly zero gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms.aggregation import token_weights
from rlhf_jax.algorithms.policy_losses import POLICY_LOSSES, PolicyLossParams, surrogate_loss

# One response of 4 tokens and a padded fifth; ratios r and advantages A per token.
RATIOS = np.array([[1.5, 0.5, 1.1, 4.0, 1.0]], np.float32)
ADVANTAGES = np.array([[2.0, -1.0, 2.0, -1.0, 0.0]], np.float32)
MASK = np.array([[1, 1, 1, 1, 0]], np.float32)
OLD = np.log(np.array([[0.2, 0.4, 0.1, 0.05, 0.5]], np.float32))
NEW = OLD + np.log(RATIOS)


def per_token(name, hp=PolicyLossParams(), logprobs=NEW, old=OLD, advantages=ADVANTAGES, mask=MASK):
  loss, stats = jax.jit(POLICY_LOSSES[name], static_argnums=4)(logprobs, old, advantages, mask, hp)
  return np.asarray(loss), {k: np.asarray(v) for k, v in stats.items()}


def test_clip_with_separate_low_and_high_ends():
  # eps 0.2 / 0.28 (DAPO's clip-higher): r 1.5, A 2 -> min(3, 1.28 * 2) = 2.56; r 0.5, A -1 ->
  # min(-0.5, -0.8) = -0.8; r 1.1 inside -> 2.2; r 4, A -1 -> -4 (the unclipped side is lower).
  loss, stats = per_token("clip", PolicyLossParams(0.2, 0.28))
  np.testing.assert_allclose(loss[0], [-2.56, 0.8, -2.2, 4.0, 0.0], rtol=1e-5)
  np.testing.assert_array_equal(stats["clipped"][0], [True, True, False, False, False])


def test_dual_clip_bounds_negative_advantages_below_by_c_times_a():
  # r 4, A -1: PPO's objective -4 is below 3 * -1 = -3, so dual-clip takes -3 (loss 3, no gradient).
  loss, stats = per_token("dual_clip", PolicyLossParams(0.2, 0.2, 3.0))
  np.testing.assert_allclose(loss[0], [-2.4, 0.8, -2.2, 3.0, 0.0], rtol=1e-5)
  np.testing.assert_array_equal(stats["clipped"][0], [True, True, False, True, False])


def test_gspo_uses_one_geometric_mean_ratio_per_response():
  # s = exp(mean log r) = (1.5 * 0.5 * 1.1 * 4)^(1/4) = 3.3^(1/4) = 1.3478; clipped at 1 + 4e-4.
  s = 3.3 ** 0.25
  loss, stats = per_token("gspo", PolicyLossParams(3e-4, 4e-4))
  np.testing.assert_allclose(stats["ratio"][0, :4], [s] * 4, rtol=1e-5)
  low, high = 1 - 3e-4, 1 + 4e-4
  expected = [-min(s * a, np.clip(s, low, high) * a) for a in ADVANTAGES[0, :4]]
  np.testing.assert_allclose(loss[0, :4], expected, rtol=1e-5)
  # Its gradient is s_i grad log pi per token where unclipped (A < 0 here: -s A), GSPO's token form.
  aggregate = lambda lp: surrogate_loss("gspo", lp, OLD, ADVANTAGES, MASK / 4, MASK / 4,
                                        PolicyLossParams(3e-4, 4e-4))[0]
  grads = np.asarray(jax.grad(aggregate)(jnp.asarray(NEW)))
  np.testing.assert_allclose(grads[0], [0.0, s / 4, 0.0, s / 4, 0.0], rtol=1e-5)


def test_cispo_clips_and_detaches_the_weight_so_every_token_keeps_a_gradient():
  # weight = sg(clip(r, 1 - 1.0, 1 + 0.28)): 1.28, 0.5, 1.1, 1.28; loss = -w A log pi.
  hp = PolicyLossParams(1.0, 0.28)
  loss, stats = per_token("cispo", hp)
  weights = np.array([1.28, 0.5, 1.1, 1.28])
  np.testing.assert_allclose(loss[0, :4], -weights * ADVANTAGES[0, :4] * NEW[0, :4], rtol=1e-5)
  np.testing.assert_array_equal(stats["clipped"][0], [True, False, False, True, False])
  grads = np.asarray(jax.grad(lambda lp: surrogate_loss("cispo", lp, OLD, ADVANTAGES, MASK, MASK, hp)[0])(NEW))
  np.testing.assert_allclose(grads[0], list(-weights * ADVANTAGES[0, :4]) + [0.0], rtol=1e-5)


def test_surrogate_loss_aggregates_and_reports_token_means():
  loss, metrics = surrogate_loss("clip", NEW, OLD, ADVANTAGES, MASK / 2, token_weights(MASK, "token_mean"),
                                 PolicyLossParams(0.2, 0.2))
  np.testing.assert_allclose(loss, -(2.4 - 0.8 + 2.2 - 4.0) / 2, rtol=1e-5)
  np.testing.assert_allclose(metrics["clip_fraction"], 2 / 4)
  np.testing.assert_allclose(metrics["ratio"], (1.5 + 0.5 + 1.1 + 4.0) / 4, rtol=1e-5)
  np.testing.assert_allclose(metrics["max_ratio_deviation"], 3.0, rtol=1e-5)  # r = 4; padding's r is not counted


@pytest.mark.parametrize("name", list(POLICY_LOSSES))
@pytest.mark.parametrize("sentinel", [-np.inf, -1e9, np.nan])
def test_sentinel_padding_gives_finite_losses_and_zero_padding_gradients(name, sentinel):
  old = OLD.copy()
  old[0, 4] = sentinel  # a sampler's log-prob on padding
  advantages = ADVANTAGES.copy()
  advantages[0, 4] = np.nan  # garbage on padding
  logprobs = NEW.copy()
  logprobs[0, 4] = -np.inf  # even the current policy's
  hp = PolicyLossParams(0.2, 0.28)
  weights = token_weights(MASK, "token_mean")
  fn = functools.partial(surrogate_loss, name, old_logprobs=old, advantages=advantages, weights=weights,
                         metric_weights=weights, hp=hp)
  (loss, metrics), grads = jax.value_and_grad(lambda lp: fn(lp), has_aux=True)(jnp.asarray(logprobs))
  assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in metrics.values()), metrics
  grads = np.asarray(grads)
  assert np.all(np.isfinite(grads)) and grads[0, 4] == 0.0
  # The same loss as with harmless padding.
  clean, _ = surrogate_loss(name, NEW, OLD, ADVANTAGES, weights, weights, hp)
  np.testing.assert_allclose(float(loss), float(clean), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_a_ratio_past_float32_gives_a_finite_loss_and_no_nan_gradient(name):
  # Issue 38: exp of an unclamped log-ratio of 100 overflows; verl, OpenRLHF and Tunix clamp it
  # to +-20, so the token's loss is finite and the guard does not refuse the whole update.
  old = jnp.asarray([[-100.0, -1.0, -1.0]])  # the first token: pi / pi_old = e^99
  advantages, mask = jnp.asarray([[-1.0, 1.0, -1.0]]), jnp.ones((1, 3))
  hp = PolicyLossParams()

  def loss(logprobs):
    losses, _ = POLICY_LOSSES[name](logprobs, old, advantages, mask, hp)
    return jnp.sum(losses)
  logprobs = jnp.asarray([[-1.0, -0.9, -1.1]])
  value, grads = jax.value_and_grad(loss)(logprobs)
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grads)))
