"""Language-modelling losses: pretraining and SFT share one masked cross-entropy.

Pure functions of arrays. SFT differs from pretraining only in its weights (1 on response
tokens, 0 on the prompt), so the prompt never contributes to the loss or its gradient.
"""

import jax
import jax.numpy as jnp

from rlhf_jax.models.logits import first_argmax, token_logprobs


def next_token_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array, normalizer=None):
  """Weighted mean cross-entropy: sum_t w_t * -log p(y_t) / normalizer.

  Args:
    logits: [batch, time, vocab]. targets, weights: [batch, time].
    normalizer: what to divide by; defaults to sum(weights). Gradient accumulation passes the
      whole batch's token count so microbatches add up to the full-batch loss exactly.
  Returns:
    (loss, metrics) with summed `nll`, `correct` and `tokens` for exact averaging across steps.
  """
  correct = first_argmax(logits) == targets
  return weighted_nll(token_logprobs(logits, targets), correct, weights, normalizer)


def weighted_nll(logprobs: jax.Array, correct: jax.Array, weights: jax.Array, normalizer=None):
  """`next_token_loss` from the targets' log-probs and argmax matches [batch, time] (models/head.py
  computes them without the whole logits)."""
  weights = weights.astype(jnp.float32)
  nll = -logprobs * weights
  if normalizer is None:
    normalizer = jnp.maximum(weights.sum(), 1.0)
  correct = correct * weights
  return nll.sum() / normalizer, {"nll": nll.sum(), "correct": correct.sum(), "tokens": weights.sum()}
