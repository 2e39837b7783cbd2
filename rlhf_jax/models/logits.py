"""What the models compute from logits, used by the heads, the sampler and the losses: the
project's one log-prob, the first argmax, and the entropy. Here, below algorithms/, so models
import nothing from the layers that use them."""

import jax
import jax.numpy as jnp
import optax


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """log p(targets | logits) at each position, in float32, shape targets.shape: the project's
  one log-prob (sampler, rollout, RL, DPO and SFT losses, evaluation)."""
  return -optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def first_argmax(x: jax.Array) -> jax.Array:
  """jnp.argmax over the last axis (the first index of the maximum) as two plain reductions: a
  CPU runs XLA's (value, index) reduction an element at a time; fused with the Gumbel noise it
  was half of a decode step's sampling time (models/sampling.py: the sampler workload 1.14x
  faster on two CPU devices, median of 4 alternating rounds, 1.02-1.25x)."""
  top = jnp.max(x, axis=-1, keepdims=True)
  return jnp.min(jnp.where(x == top, jnp.arange(x.shape[-1]), x.shape[-1] - 1), axis=-1)


def entropy_from_logits(logits: jax.Array) -> jax.Array:
  """H = -sum_v p_v log p_v over the last axis, [batch, time, vocab] -> [batch, time].

  Via log_softmax, so large logits do not overflow; tokens with p = 0 (logit -inf, e.g. filtered by
  top-k) contribute 0 rather than 0 * -inf = nan, in the value and in the gradient.
  """
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  p = jnp.exp(logp)
  return -jnp.sum(p * jnp.where(p > 0, logp, 0.0), axis=-1)
