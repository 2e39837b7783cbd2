"""GAE against a plain Python double loop, on hand-worked cases, and under jit with traced gamma/lam."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms.gae import generalized_advantage_estimation


def reference_gae(rewards, values, mask, gamma, lam):
  """The textbook recursion, one row and one step at a time, over each row's valid block only."""
  advantages = np.zeros_like(rewards)
  for b in range(rewards.shape[0]):
    valid = np.flatnonzero(mask[b])
    if valid.size == 0:
      continue
    last_advantage = 0.0
    for t in range(valid[-1], valid[0] - 1, -1):
      next_value = values[b, t + 1] if t < valid[-1] else 0.0
      delta = rewards[b, t] + gamma * next_value - values[b, t]
      last_advantage = delta + gamma * lam * last_advantage
      advantages[b, t] = last_advantage
  return advantages, (advantages + values) * mask


def random_masks(rng, batch, time):
  """Contiguous blocks: left-padded, right-padded, both, full, a single token and an all-zero row."""
  mask = np.zeros((batch, time), np.float32)
  for b in range(batch):
    start = rng.integers(0, time)
    end = rng.integers(start + 1, time + 1)
    mask[b, start:end] = 1
  mask[0] = 0
  mask[1] = 1
  mask[2, :-3] = 0
  mask[2, -3:] = 1  # left-padded, ends at the last column
  mask[3, :] = 0
  mask[3, :4] = 1  # right-padded
  return mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_double_loop(seed, gamma, lam):
  rng = np.random.default_rng(seed)
  rewards = rng.normal(size=(8, 12)).astype(np.float32)
  values = rng.normal(size=(8, 12)).astype(np.float32)
  mask = random_masks(rng, 8, 12)
  advantages, returns = generalized_advantage_estimation(rewards, values, mask, gamma, lam)
  expected_advantages, expected_returns = reference_gae(rewards, values, mask, gamma, lam)
  np.testing.assert_allclose(advantages, expected_advantages, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(returns, expected_returns, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(advantages)[mask == 0] == 0) and np.all(np.asarray(returns)[mask == 0] == 0)
  on = mask == 1
  np.testing.assert_allclose(np.asarray(returns)[on], (np.asarray(advantages) + values)[on], rtol=1e-6)


def test_hand_worked_case():
  # One left-padded row, two valid tokens; gamma 0.5, lam 0.5; the score sits on the last token.
  rewards = jnp.array([[9.0, 0.0, 1.0]])
  values = jnp.array([[7.0, 2.0, 4.0]])
  mask = jnp.array([[0, 1, 1]])
  advantages, returns = generalized_advantage_estimation(rewards, values, mask, 0.5, 0.5)
  # t=2: delta = 1 + 0 - 4 = -3, A = -3.  t=1: delta = 0 + 0.5 * 4 - 2 = 0, A = 0 + 0.25 * -3.
  np.testing.assert_allclose(advantages, [[0.0, -0.75, -3.0]], rtol=1e-6)
  np.testing.assert_allclose(returns, [[0.0, 1.25, 1.0]], rtol=1e-6)


def test_lam_one_gamma_one_gives_reward_to_go():
  rewards = jnp.array([[0.0, 1.0, 2.0, 3.0, 0.0]])
  values = jnp.array([[5.0, 1.0, -2.0, 0.5, 5.0]])
  mask = jnp.array([[0, 1, 1, 1, 0]])
  _, returns = generalized_advantage_estimation(rewards, values, mask, 1.0, 1.0)
  np.testing.assert_allclose(returns, [[0.0, 6.0, 5.0, 3.0, 0.0]], rtol=1e-6)


def test_values_and_rewards_outside_the_mask_are_ignored():
  rng = np.random.default_rng(3)
  rewards = rng.normal(size=(2, 10)).astype(np.float32)
  values = rng.normal(size=(2, 10)).astype(np.float32)
  mask = np.zeros((2, 10), np.float32)
  mask[0, 2:6] = 1
  mask[1, 5:] = 1
  base = generalized_advantage_estimation(rewards, values, mask, 0.9, 0.95)
  garbage = np.where(mask == 0, np.float32(1e6), values)
  garbage[0, 7] = np.inf
  noisy_rewards = np.where(mask == 0, np.float32(-1e6), rewards)
  moved = generalized_advantage_estimation(noisy_rewards, garbage, mask, 0.9, 0.95)
  for a, b in zip(base, moved):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_jit_with_traced_gamma_and_lam_compiles_once():
  rng = np.random.default_rng(4)
  rewards = rng.normal(size=(4, 7)).astype(np.float32)
  values = rng.normal(size=(4, 7)).astype(np.float32)
  mask = random_masks(rng, 4, 7)
  gae = jax.jit(chex.assert_max_traces(generalized_advantage_estimation, n=1))
  for gamma, lam in [(1.0, 0.95), (0.9, 0.5)]:
    advantages, returns = gae(rewards, values, mask, jnp.float32(gamma), jnp.float32(lam))
    expected_advantages, expected_returns = reference_gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(advantages, expected_advantages, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(returns, expected_returns, rtol=1e-5, atol=1e-5)
  chex.assert_shape([advantages, returns], (4, 7))


def one_block_gae(rewards, values, mask, gamma, lam):
  """The implementation before multi-turn masks, kept to show that one-turn rows give its
  numbers bit for bit."""
  valid = mask > 0
  rewards = jnp.where(valid, jnp.asarray(rewards, jnp.float32), 0.0)
  values = jnp.where(valid, jnp.asarray(values, jnp.float32), 0.0)
  deltas = rewards + gamma * jnp.pad(values[:, 1:], ((0, 0), (0, 1))) - values

  def step(next_advantage, inputs):
    delta, m = inputs
    advantage = jnp.where(m, delta + gamma * lam * next_advantage, 0.0)
    return advantage, advantage

  _, advantages = jax.lax.scan(step, jnp.zeros(rewards.shape[0], jnp.float32), (deltas.T, valid.T), reverse=True)
  return advantages.T, jnp.where(valid, advantages.T + values, 0.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_one_turn_rows_are_unchanged_bit_for_bit_and_turns_chain_over_the_environments_tokens(seed):
  rng = np.random.default_rng(seed)
  rewards, values = (rng.normal(size=(8, 12)).astype(np.float32) for _ in range(2))
  mask = random_masks(rng, 8, 12)
  for new, old in zip(generalized_advantage_estimation(rewards, values, mask, 1.0, 0.95),
                      one_block_gae(rewards, values, mask, 1.0, 0.95)):
    np.testing.assert_array_equal(np.asarray(new), np.asarray(old))
  # Two policy turns with three environment tokens between them: the policy's tokens alone,
  # as one sequence, give the same advantages; the environment's get none.
  turns = np.array([[0, 1, 1, 0, 0, 0, 1, 1, 0]], np.float32)
  kept = turns[0] > 0
  advantages, returns = generalized_advantage_estimation(rewards[:1, :9], values[:1, :9], turns, 0.9, 0.8)
  chained, chained_returns = reference_gae(rewards[:1, :9][:, kept], values[:1, :9][:, kept],
                                           np.ones((1, kept.sum()), np.float32), 0.9, 0.8)
  np.testing.assert_allclose(np.asarray(advantages)[:, kept], chained, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(returns)[:, kept], chained_returns, rtol=1e-6)
  assert np.all(np.asarray(advantages)[:, ~kept] == 0)
