"""KL estimators on hand numbers and against the exact KL, KL-shaped rewards, the adaptive controller,
and the masked reductions they share."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms import kl
from rlhf_jax.algorithms.masked import last_token
from rlhf_jax.algorithms.kl import (KL_KINDS, init_kl_controller, kl_penalty, masked_mean, masked_sum,
                                    update_kl_controller)

# Jitted as the trainer calls it (kind is a static string, kl_coef may be traced); one compile per
# shape is also much faster than eager mode's one per op.
penalised_rewards = jax.jit(kl.penalised_rewards, static_argnames="kind")


def test_estimators_on_hand_numbers():
  logprobs, ref = jnp.array([[-1.0, -2.0, -0.5]]), jnp.array([[-2.0, -1.0, -0.5]])
  np.testing.assert_allclose(kl_penalty(logprobs, ref, "k1"), [[1.0, -1.0, 0.0]])
  np.testing.assert_allclose(kl_penalty(logprobs, ref, "k2"), [[0.5, 0.5, 0.0]])
  np.testing.assert_allclose(kl_penalty(logprobs, ref, "abs"), [[1.0, 1.0, 0.0]])
  # k3 with u = ref - logp: exp(u) - 1 - u.
  np.testing.assert_allclose(kl_penalty(logprobs, ref, "k3"), [[np.exp(-1) - 1 + 1, np.exp(1) - 1 - 1, 0.0]],
                             rtol=1e-6)


def test_k3_is_nonnegative_and_zero_only_when_equal():
  logprobs, ref = np.random.default_rng(0).normal(size=(2, 64, 32)).astype(np.float32) * 3.0
  k3 = kl_penalty(logprobs, ref, "k3")
  assert np.all(np.asarray(k3) > 0)
  assert np.all(np.asarray(kl_penalty(logprobs, logprobs, "k3")) == 0)


def test_unknown_kind_lists_the_kinds():
  with pytest.raises(ValueError, match="k1.*k2.*k3.*abs"):
    kl_penalty(jnp.zeros((1, 2)), jnp.zeros((1, 2)), "k4")


def test_k1_and_k3_estimate_the_exact_kl_from_samples_of_pi():
  pi = np.array([0.5, 0.25, 0.15, 0.1])
  ref = np.array([0.25, 0.25, 0.25, 0.25])
  exact = float(np.sum(pi * np.log(pi / ref)))  # 0.1064 nats
  tokens = np.random.default_rng(1).choice(4, size=(1, 200_000), p=pi)
  logprobs, ref_logprobs = np.log(pi)[tokens].astype(np.float32), np.log(ref)[tokens].astype(np.float32)
  for kind in ("k1", "k3"):
    samples = np.asarray(kl_penalty(logprobs, ref_logprobs, kind), np.float64)
    standard_error = samples.std() / np.sqrt(samples.size)
    assert abs(samples.mean() - exact) < 4 * standard_error + 1e-4, kind
  # k3 is the lower-variance of the two unbiased estimators.
  assert np.var(kl_penalty(logprobs, ref_logprobs, "k3")) < np.var(kl_penalty(logprobs, ref_logprobs, "k1"))


def test_penalised_rewards_put_the_score_on_the_last_valid_token():
  logprobs = jnp.array([[0.0, -1.0, -1.0, -1.0, 0.0], [-1.0, -1.0, -2.0, 0.0, 0.0], [0.0] * 5])
  ref = jnp.array([[0.0, -2.0, -1.5, -1.0, 0.0], [-2.0, -1.0, -1.0, 0.0, 0.0], [0.0] * 5])
  mask = jnp.array([[0, 1, 1, 1, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])  # left+right, right, empty
  scores = jnp.array([10.0, 20.0, 30.0])
  rewards, metrics = penalised_rewards(scores, logprobs, ref, mask, kl_coef=0.1)
  # k1 = logp - ref: row 0 -> [_, 1, 0.5, 0, _], row 1 -> [1, 0, -1, _, _].
  np.testing.assert_allclose(rewards, [[0.0, -0.1, -0.05, 10.0, 0.0],
                                       [-0.1, 0.0, 20.1, 0.0, 0.0],
                                       [0.0] * 5], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(metrics["kl"], (1.5 + 0.0 + 0.0) / 3, rtol=1e-6)
  np.testing.assert_allclose(metrics["score"], 20.0, rtol=1e-6)
  np.testing.assert_allclose(metrics["non_score_reward"], (-0.15 + 0.0 + 0.0) / 3, rtol=1e-6)
  k3_rewards, _ = penalised_rewards(scores, logprobs, ref, mask, kl_coef=0.1, kind="k3")
  expected = -0.1 * np.asarray(kl_penalty(logprobs, ref, "k3")) * np.asarray(mask)
  expected[0, 3] += 10.0
  expected[1, 2] += 20.0
  np.testing.assert_allclose(k3_rewards, expected, rtol=1e-6, atol=1e-7)


def test_penalised_rewards_with_a_zero_coefficient_is_the_score_alone():
  logprobs, ref = np.random.default_rng(2).normal(size=(2, 3, 6)).astype(np.float32)
  mask = jnp.array([[0, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1]])
  rewards, metrics = penalised_rewards(jnp.ones(3), logprobs, ref, mask, kl_coef=jnp.float32(0.0))
  np.testing.assert_allclose(rewards, [[0, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1]])
  np.testing.assert_allclose(metrics["kl"], jnp.mean(masked_sum(logprobs - ref, mask, axis=-1)), rtol=1e-5)


def test_controller_moves_towards_the_target_and_clips_the_error():
  kw = dict(target=6.0, horizon=10_000, adaptive=True)
  state = init_kl_controller(0.15)
  # Published constants: KL 12 is 100% over target, clipped to +20%; 256 episodes per batch.
  np.testing.assert_allclose(update_kl_controller(state, 12.0, 256, **kw).coef, 0.15 * (1 + 0.2 * 256 / 1e4),
                             rtol=1e-6)
  np.testing.assert_allclose(update_kl_controller(state, 0.0, 256, **kw).coef, 0.15 * (1 - 0.2 * 256 / 1e4),
                             rtol=1e-6)
  # Within the clip the error is proportional: KL 6.6 -> +10%.
  np.testing.assert_allclose(update_kl_controller(state, 6.6, 1000, **kw).coef, 0.15 * 1.01, rtol=1e-5)
  assert float(update_kl_controller(state, 7.0, 64, **kw).coef) > 0.15
  assert float(update_kl_controller(state, 5.0, 64, **kw).coef) < 0.15
  np.testing.assert_allclose(update_kl_controller(state, 6.0, 64, **kw).coef, 0.15, rtol=1e-7)
  fixed = update_kl_controller(state, 100.0, 256, target=6.0, horizon=10_000, adaptive=False)
  assert float(fixed.coef) == float(np.float32(0.15))


def test_controller_under_jit_in_a_loop():
  update = jax.jit(functools.partial(update_kl_controller, target=6.0, horizon=10_000, adaptive=True))
  state = init_kl_controller(0.15)
  for _ in range(3):
    state = update(state, jnp.float32(20.0), 1000)
  np.testing.assert_allclose(state.coef, 0.15 * 1.02 ** 3, rtol=1e-5)


def test_masked_reductions_skip_padding_even_if_it_is_inf():
  x = jnp.array([[1.0, 2.0, jnp.inf], [4.0, -jnp.inf, 6.0]])
  mask = jnp.array([[1, 1, 0], [1, 0, 1]])
  assert float(masked_sum(x, mask)) == 13.0 and float(masked_mean(x, mask)) == 13.0 / 4
  np.testing.assert_allclose(masked_mean(x, mask, axis=-1), [1.5, 5.0])
  assert float(masked_mean(x, jnp.zeros_like(mask))) == 0.0
  grads = jax.grad(lambda v: masked_mean(v, mask))(x)
  np.testing.assert_allclose(grads, np.asarray(mask) / 4)
  assert set(KL_KINDS) == {"k1", "k2", "k3", "abs"}


def test_the_score_lands_on_the_last_policy_token_of_a_multi_turn_row():
  one_turn = jnp.array([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], jnp.float32)
  old = one_turn * (1.0 - jnp.pad(one_turn[:, 1:], ((0, 0), (0, 1))))  # the one-block rule it replaced
  np.testing.assert_array_equal(np.asarray(last_token(one_turn)), np.asarray(old))
  turns = jnp.array([[1, 1, 0, 0, 1, 0]], jnp.float32)  # two turns, environment tokens between
  np.testing.assert_array_equal(np.asarray(last_token(turns)), [[0, 0, 0, 0, 1, 0]])
