"""The LM head's per-token statistics, without the [batch, time, vocab] logits.

At a large vocabulary the float32 logits are the largest activation of a loss (Qwen's 152k:
0.6 MB per token, 300 MB per 512-token row). What the losses read of them is per token: the
target's log-prob, the entropy, whether the argmax is the target. `token_stats` computes those
`chunk` positions at a time (`lax.map`, each chunk rematerialised in the backward pass), so the
peak is one chunk's logits, forward and backward. The sampler keeps the model's own logits: it
needs one position's.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rlhf_jax.models.layers import weight_product
from rlhf_jax.models.logits import entropy_from_logits, first_argmax, token_logprobs
from rlhf_jax.sharding import constrain


class TokenStats(NamedTuple):
  logprobs: jax.Array  # [batch, time] log p(target) at the temperature, float32
  entropy: jax.Array  # [batch, time] of the tempered distribution
  correct: jax.Array  # [batch, time] bool: the argmax is the target


def head_kernel(params, cfg) -> jax.Array:
  """The LM head's [embed, vocab] weights: the tied embedding's transpose, or `lm_head`'s kernel."""
  return params["embed"]["embedding"].T if cfg.tie_embeddings else params["lm_head"]["kernel"]


def head_logits(hidden, kernel, dtype) -> jax.Array:
  """float32 logits of `hidden` [batch, time, embed], the product in the compute dtype as the model's."""
  logits = weight_product(hidden.astype(dtype), kernel.astype(dtype))
  return constrain(logits, ("batch", "length", "vocab")).astype(jnp.float32)


def stats_of_logits(logits, targets, temperature: float = 1.0) -> TokenStats:
  scaled = logits / temperature
  return TokenStats(token_logprobs(scaled, targets), entropy_from_logits(scaled),
                    first_argmax(logits) == targets)


def token_stats(hidden, kernel, targets, *, dtype, temperature: float = 1.0, chunk: int = 0) -> TokenStats:
  """Statistics of the head's distribution at each position of `hidden` against `targets`
  [batch, time], `chunk` positions at a time (0, or a chunk >= time: all at once)."""
  batch, time = targets.shape
  if not chunk or chunk >= time:
    return stats_of_logits(head_logits(hidden, kernel, dtype), targets, temperature)
  pad = -time % chunk
  hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
  targets = jnp.pad(targets, ((0, 0), (0, pad)))
  n = (time + pad) // chunk
  split = lambda x: jnp.moveaxis(x.reshape(batch, n, chunk, *x.shape[2:]), 1, 0)

  @jax.checkpoint  # the backward pass recomputes a chunk's logits rather than keeping all of them
  def one_chunk(chunk_inputs):
    h, y = chunk_inputs
    return stats_of_logits(head_logits(h, kernel, dtype), y, temperature)

  stats = jax.lax.map(one_chunk, (split(hidden), split(targets)))
  return TokenStats(*(jnp.moveaxis(x, 0, 1).reshape(batch, n * chunk)[:, :time] for x in stats))


def model_token_stats(model, params, hidden, targets, temperature: float = 1.0) -> TokenStats:
  """`token_stats` with `model`'s head, compute dtype and `logits_chunk`."""
  cfg = model.cfg
  return token_stats(hidden, head_kernel(params, cfg), targets, dtype=cfg.compute_dtype, temperature=temperature,
                     chunk=cfg.logits_chunk)


def next_token_stats(model, params, hidden, tokens, start: int, temperature: float = 1.0) -> TokenStats:
  """Statistics of tokens[:, start:], each predicted from the hidden state before it."""
  return model_token_stats(model, params, hidden[:, start - 1:-1], tokens[:, start:], temperature)
