"""Critic-free advantage estimators: one sequence-level advantage per sampled response, and
REINFORCE++'s token-level return.

Every estimator takes `returns` [n] (a response's score, minus the summed KL penalty when the
KL is in the reward) and gives advantages [n]; the update broadcasts them over the response
tokens. Grouped estimators take the responses as [prompts * k] with the k samples of a prompt
next to each other (what `jnp.repeat(prompts, k, axis=0)` gives).
"""

import jax
import jax.numpy as jnp

from rlhf_jax.algorithms import gae


def moving_average_baseline(returns: jax.Array, baseline: jax.Array, decay: float):
  """REINFORCE with a baseline: A = R - b, b the moving average of earlier batches' mean return.

  Returns (advantages, new_baseline). The baseline is the one from before this batch, so it
  does not depend on the responses it centres.
  """
  advantages = returns - baseline
  return advantages, decay * baseline + (1.0 - decay) * jnp.mean(returns)


def _groups(returns: jax.Array, k: int) -> jax.Array:
  if returns.shape[0] % k:
    raise ValueError(f"{returns.shape[0]} responses do not split into groups of {k}")
  return returns.reshape(-1, k)


def rloo_advantages(returns: jax.Array, k: int) -> jax.Array:
  """RLOO (Ahmadian et al. 2024): R_i minus the mean of the other k - 1 samples of its prompt."""
  if k < 2:
    raise ValueError("RLOO needs at least 2 samples per prompt")
  groups = _groups(returns, k)
  others = (jnp.sum(groups, axis=1, keepdims=True) - groups) / (k - 1)
  return (groups - others).reshape(-1)


def grpo_advantages(returns: jax.Array, k: int, scale_by_std: bool = True, eps: float = 1e-4) -> jax.Array:
  """GRPO (Shao et al. 2024): R_i minus its group's mean, divided by the group's std (switchable,
  as Dr. GRPO drops it); the std is the unbiased one, as in the paper's reference code."""
  if k < 2:
    raise ValueError("GRPO needs at least 2 samples per prompt")
  groups = _groups(returns, k)
  centred = groups - jnp.mean(groups, axis=1, keepdims=True)
  if scale_by_std:
    centred = centred / (jnp.std(groups, axis=1, ddof=1, keepdims=True) + eps)
  return centred.reshape(-1)


def remax_advantages(returns: jax.Array, greedy_returns: jax.Array) -> jax.Array:
  """ReMax (Li et al. 2023): R minus the return of the greedy response to the same prompt."""
  return returns - greedy_returns


def token_returns(rewards: jax.Array, mask: jax.Array, gamma: float = 1.0) -> jax.Array:
  """G_t = sum_{s >= t} gamma^(s - t) r_s over each response, 0 off it (REINFORCE++'s return).

  GAE with no critic (V = 0) and lambda 1 is exactly this discounted return.
  """
  discounted, _ = gae.generalized_advantage_estimation(rewards, jnp.zeros_like(rewards), mask, gamma, 1.0)
  return discounted
