"""Generalised advantage estimation (Schulman et al. 2016) over padded token sequences.

A row's response is its tokens with mask 1: one contiguous block for a one-turn response, or
the policy's turns of a multi-turn trajectory with the environment's tokens (mask 0) between
them. Masked tokens are passed over, as verl's multi-turn GAE does: the value after a turn's
last token is the value at the next turn's first, one gamma later, and the environment's tokens
get no advantage. The episode ends at the row's last valid token, so the value after it is 0
and nothing past it leaks into the advantages.
"""

import jax
import jax.numpy as jnp


def generalized_advantage_estimation(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma, lam):
  """Advantages and returns by the GAE recursion, run backwards over the valid tokens.

    delta_t = r_t + gamma * V_next(t) - V_t,  V_next(t) the value at the next valid token (0 after the last)
    A_t     = delta_t + gamma * lam * A_next(t)
    R_t     = A_t + V_t
  and 0 at masked tokens, which leave the recursion's carry (V_next, A_next) as they found it.
  For a contiguous mask this is the textbook recursion, bit for bit.

  Args:
    rewards, values, mask: [batch, time]. gamma, lam: Python floats or traced scalars.
  Returns:
    (advantages, returns), both [batch, time] float32 and 0 where mask is 0.
  """
  valid = mask > 0
  # `where`, not multiplication by the mask, so garbage (even inf) in padded positions cannot leak.
  rewards = jnp.where(valid, jnp.asarray(rewards, jnp.float32), 0.0)
  values = jnp.where(valid, jnp.asarray(values, jnp.float32), 0.0)

  def step(carry, inputs):
    next_value, next_advantage = carry
    reward, value, m = inputs
    delta = reward + gamma * next_value - value
    advantage = jnp.where(m, delta + gamma * lam * next_advantage, 0.0)
    carry = (jnp.where(m, value, next_value), jnp.where(m, advantage, next_advantage))
    return carry, advantage

  # Scan over time with the batch as the carry's vector: [time, batch] in, reversed.
  zeros = jnp.zeros(rewards.shape[0], jnp.float32)
  _, advantages = jax.lax.scan(step, (zeros, zeros), (rewards.T, values.T, valid.T), reverse=True)
  advantages = advantages.T
  return advantages, jnp.where(valid, advantages + values, 0.0)
