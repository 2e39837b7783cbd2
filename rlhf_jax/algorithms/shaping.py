"""Reward shaping and sample selection of DAPO (Yu et al. 2025), as pure functions.

  overlong_penalty: a soft penalty over the last `buffer` tokens of the response budget L:
    0 for |y| <= L - buffer, ((L - buffer) - |y|) / buffer up to L (reaching -1 at |y| = L),
    times `factor`. (DAPO's -1 beyond L cannot happen: sampling stops at L.)
  informative_groups: dynamic sampling. A group whose k rewards are all equal has zero
    advantage under any group baseline, so it carries no gradient and only dilutes the
    batch's token mean; it gets weight 0.
  select_groups: DAPO's refill. With extra prompts drawn (`rl.oversample`), the groups the
    update keeps: informative ones first, in the order drawn, then uninformative ones only
    where too few were informative, so the batch keeps its static size.
"""

import jax
import jax.numpy as jnp


def overlong_penalty(lengths: jax.Array, max_len: int, buffer: int, factor: float = 1.0) -> jax.Array:
  """Per-response penalty [n] (<= 0) for response lengths [n]; 0 everywhere with buffer 0."""
  if buffer <= 0:
    return jnp.zeros(lengths.shape, jnp.float32)
  excess = jnp.asarray(lengths, jnp.float32) - (max_len - buffer)
  return factor * jnp.clip(-excess / buffer, -1.0, 0.0)


def informative_groups(rewards: jax.Array, group_size: int, tolerance: float = 1e-6) -> jax.Array:
  """1.0 for the responses of groups whose rewards are not all equal, else 0.0, [n]."""
  groups = rewards.reshape(-1, group_size)
  spread = jnp.max(groups, axis=1) - jnp.min(groups, axis=1)
  return jnp.repeat((spread > tolerance).astype(jnp.float32), group_size)


def select_groups(weights: jax.Array, group_size: int, keep: int) -> jax.Array:
  """Row indices [keep * group_size] of `keep` of the groups that `weights` [n] (constant
  within each group of `group_size` rows) mark: weight-1 groups first, each group's rows in
  order, then weight-0 groups to fill."""
  informative = weights.reshape(-1, group_size)[:, 0]
  groups = jnp.argsort(-informative, stable=True)[:keep]
  return (groups[:, None] * group_size + jnp.arange(group_size)).reshape(-1)
