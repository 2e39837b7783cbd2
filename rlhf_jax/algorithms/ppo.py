"""PPO's pieces as pure functions: the clipped policy surrogate, the clipped value loss, masked
advantage whitening, token entropy and the critic's explained variance (Schulman et al. 2017;
defaults from Huang et al. 2024: eps 0.2, value clip 0.2, whitened advantages).
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


def clipped_objective(ratio: jax.Array, advantages: jax.Array, clip_eps) -> jax.Array:
  """Per token min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A), the objective to maximise.

  ratio 1.5, A 2, eps 0.2 -> 2.4; ratio 0.5, A -1 -> -0.8.
  """
  return jnp.minimum(ratio * advantages, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages)


def clipped_surrogate_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
                           weights: jax.Array, *, clip_eps, metric_weights=None):
  """loss = -sum_t w_t min(rho A, clip(rho, 1 - eps, 1 + eps) A), rho = exp(logp - logp_old).

  Args:
    logprobs: [batch, time] under the current policy (differentiated). old_logprobs, advantages:
      [batch, time] from the rollout (held constant). weights: per-token loss weights, 0 off the
      response; `mask / mask.sum()` is PPO's token mean (see `reinforce.token_weights`).
    metric_weights: per-token weights of the metrics (default `weights`). Token-mean weights
      make them fractions and means whatever the loss's reduction (with REINFORCE's summed
      tokens, `weights` sum to the mean response length, not 1).
  Returns:
    (loss, metrics): `clip_fraction` (where the clipped term is the minimum, so the token gets
    no gradient), `approx_kl` ((logp - logp_old)^2 / 2), `ratio`.
  """
  log_ratio = jnp.asarray(logprobs, jnp.float32) - jnp.asarray(old_logprobs, jnp.float32)
  ratio = jnp.exp(log_ratio)
  objective = clipped_objective(ratio, advantages, clip_eps)
  # The clipped term is active exactly when it is strictly below the unclipped one: ratio above
  # 1 + eps with A > 0, or below 1 - eps with A < 0.
  clipped = objective < ratio * advantages
  metric_weights = weights if metric_weights is None else metric_weights
  metrics = {"clip_fraction": masked_sum(clipped.astype(jnp.float32), metric_weights),
             "approx_kl": masked_sum(0.5 * jnp.square(log_ratio), metric_weights),
             "ratio": masked_sum(ratio, metric_weights)}
  return -masked_sum(objective, weights), metrics


def clipped_value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array, weights: jax.Array,
                       *, clip):
  """0.5 * sum_t w_t max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clip(V - V_old, -c, c).

  Taking the max makes the clip pessimistic: the critic cannot lower its loss by moving further
  than `clip` from the rollout's values. `weights` as in `clipped_surrogate_loss`.
  Returns:
    (loss, metrics) with `value_clip_fraction` (weighted share of tokens where the clipped error
    is the larger) and `value_loss`.
  """
  values = jnp.asarray(values, jnp.float32)
  clipped_values = old_values + jnp.clip(values - old_values, -clip, clip)
  unclipped_error = jnp.square(values - returns)
  clipped_error = jnp.square(clipped_values - returns)
  loss = 0.5 * masked_sum(jnp.maximum(unclipped_error, clipped_error), weights)
  clip_fraction = masked_sum((clipped_error > unclipped_error).astype(jnp.float32), weights)
  return loss, {"value_clip_fraction": clip_fraction, "value_loss": loss}


def entropy_from_logits(logits: jax.Array) -> jax.Array:
  """H = -sum_v p_v log p_v over the last axis, [batch, time, vocab] -> [batch, time].

  Via log_softmax, so large logits do not overflow; tokens with p = 0 (logit -inf, e.g. filtered by
  top-k) contribute 0 rather than 0 * -inf = nan, in the value and in the gradient.
  """
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  p = jnp.exp(logp)
  return -jnp.sum(p * jnp.where(p > 0, logp, 0.0), axis=-1)


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
  """1 - Var[R - V] / Var[R] over the masked entries: 1 for a perfect critic, 0 for a constant one.

  0 when Var[R] = 0, where the ratio is undefined.
  """
  var_returns = masked_var(returns, mask)
  var_residual = masked_var(returns - values, mask)
  safe = jnp.where(var_returns > 0, var_returns, 1.0)
  return jnp.where(var_returns > 0, 1.0 - var_residual / safe, 0.0)
