"""Generalised advantage estimation (Schulman et al. 2016) over padded token sequences.

Each row's response is one contiguous block of mask == 1 (left padding before it, right padding
after it, or nothing at all). The episode ends at the block's last token, so the value after it is
0 and nothing past it leaks into the advantages.
"""

import jax
import jax.numpy as jnp


def generalized_advantage_estimation(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma, lam):
  """Advantages and returns by the GAE recursion, run backwards over time.

    delta_t = r_t + gamma * m_{t+1} V_{t+1} - V_t
    A_t     = m_t (delta_t + gamma * lam * A_{t+1})
    R_t     = m_t (A_t + V_t)

  For a contiguous mask, m_{t+1} = 0 exactly at and after the last valid token, which is where the
  value of the next state must be 0; A_{t+1} is then 0 too, so the recursion restarts there.

  Args:
    rewards, values, mask: [batch, time]. gamma, lam: Python floats or traced scalars.
  Returns:
    (advantages, returns), both [batch, time] float32 and 0 where mask is 0.
  """
  valid = mask > 0
  # `where`, not multiplication by the mask, so garbage (even inf) in padded positions cannot leak.
  rewards = jnp.where(valid, jnp.asarray(rewards, jnp.float32), 0.0)
  values = jnp.where(valid, jnp.asarray(values, jnp.float32), 0.0)
  next_values = jnp.pad(values[:, 1:], ((0, 0), (0, 1)))
  deltas = rewards + gamma * next_values - values

  def step(next_advantage, inputs):
    delta, m = inputs
    advantage = jnp.where(m, delta + gamma * lam * next_advantage, 0.0)
    return advantage, advantage

  # Scan over time with the batch as the carry's vector: [time, batch] in, reversed.
  _, advantages = jax.lax.scan(step, jnp.zeros(rewards.shape[0], jnp.float32), (deltas.T, valid.T),
                               reverse=True)
  advantages = advantages.T
  return advantages, jnp.where(valid, advantages + values, 0.0)
