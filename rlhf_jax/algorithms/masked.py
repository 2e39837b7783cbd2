"""Reductions over the response tokens only: sum, mean and variance where mask == 1.

`mask` is 1 on tokens that count and 0 elsewhere (float or int); it is cast to float32. Padded
positions may hold anything (e.g. -inf log-probs of PAD), so they are selected away with `where`
rather than multiplied by 0, which would turn inf into nan.
"""

import jax
import jax.numpy as jnp


def masked_sum(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """sum_i x_i * m_i over `axis` (all axes if None)."""
  mask = jnp.asarray(mask, jnp.float32)
  return jnp.sum(jnp.where(mask > 0, x * mask, 0.0), axis=axis)


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """sum_i x_i m_i / sum_i m_i; 0 where the mask is empty (the count is floored at 1, as in lm.py)."""
  count = jnp.sum(jnp.asarray(mask, jnp.float32), axis=axis)
  return masked_sum(x, mask, axis) / jnp.maximum(count, 1.0)


def masked_var(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """Population variance of the masked entries: masked_mean((x - masked_mean(x))^2)."""
  mean = masked_mean(x, mask, axis)
  centred = x - (mean if axis is None else jnp.expand_dims(mean, axis))
  return masked_mean(jnp.square(centred), mask, axis)


def last_token(mask: jax.Array) -> jax.Array:
  """1.0 at each row's last valid token, else 0 (a row with none: all 0). A multi-turn row's
  mask has a block per policy turn; only the last block's last token is marked."""
  valid = jnp.asarray(mask) > 0
  last = valid.shape[-1] - 1 - jnp.argmax(jnp.flip(valid, axis=-1), axis=-1)
  at_last = jnp.arange(valid.shape[-1]) == last[..., None]
  return (at_last & valid).astype(jnp.float32)
