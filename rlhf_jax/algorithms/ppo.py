"""PPO's pieces as pure functions: the clipped objective, the clipped value loss, masked
advantage whitening, token entropy and the critic's explained variance (Schulman et al. 2017;
defaults from Huang et al. 2024: eps 0.2, value clip 0.2, whitened advantages). The policy
losses built on the clipped objective are `policy_losses`' members.
"""

import jax
import jax.numpy as jnp

from rlhf_jax.algorithms.masked import masked_mean, masked_sum, masked_var


def whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True) -> jax.Array:
  """(x - mean) / sqrt(var + 1e-8) over the mask == 1 entries; 0 where mask is 0.

  The statistics are the population mean and variance of the valid entries only, so padding does
  not pull them. shift_mean=False (static) adds the mean back: rescale without recentring.
  """
  mean, var = masked_mean(x, mask), masked_var(x, mask)
  whitened = (x - mean) * jax.lax.rsqrt(var + 1e-8)
  if not shift_mean:
    whitened = whitened + mean
  return jnp.where(mask > 0, whitened, 0.0)


def clipped_objective(ratio: jax.Array, advantages: jax.Array, clip_eps, clip_eps_high=None) -> jax.Array:
  """Per token min(ratio * A, clip(ratio, 1 - eps, 1 + eps_high) * A), the objective to maximise
  (eps_high defaults to eps; DAPO's clip-higher raises it).

  ratio 1.5, A 2, eps 0.2 -> 2.4; ratio 0.5, A -1 -> -0.8.
  """
  high = clip_eps if clip_eps_high is None else clip_eps_high
  return jnp.minimum(ratio * advantages, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + high) * advantages)


def clipped_value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array, weights: jax.Array,
                       *, clip):
  """0.5 * sum_t w_t max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clip(V - V_old, -c, c).

  Taking the max makes the clip pessimistic: the critic cannot lower its loss by moving further
  than `clip` from the rollout's values. `weights`: per-token weights, 0 off the response
  (`aggregation`). Values and returns are masked by them before any square, so non-finite
  padding gives neither a NaN loss nor a NaN gradient.
  Returns:
    (loss, metrics) with `value_clip_fraction` (weighted share of tokens where the clipped error
    is the larger) and `value_loss`.
  """
  valid = weights > 0
  values = jnp.where(valid, jnp.asarray(values, jnp.float32), 0.0)
  old_values, returns = jnp.where(valid, old_values, 0.0), jnp.where(valid, returns, 0.0)
  clipped_values = old_values + jnp.clip(values - old_values, -clip, clip)
  unclipped_error = jnp.square(values - returns)
  clipped_error = jnp.square(clipped_values - returns)
  loss = 0.5 * masked_sum(jnp.maximum(unclipped_error, clipped_error), weights)
  clip_fraction = masked_sum((clipped_error > unclipped_error).astype(jnp.float32), weights)
  return loss, {"value_clip_fraction": clip_fraction, "value_loss": loss}


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
  """1 - Var[R - V] / Var[R] over the masked entries: 1 for a perfect critic, 0 for a constant one.

  0 when Var[R] = 0, where the ratio is undefined.
  """
  var_returns = masked_var(returns, mask)
  var_residual = masked_var(returns - values, mask)
  safe = jnp.where(var_returns > 0, var_returns, 1.0)
  return jnp.where(var_returns > 0, 1.0 - var_residual / safe, 0.0)
