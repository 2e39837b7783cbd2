"""Loss aggregation: how per-token losses of a (mini)batch become one number.

Each member maps the response mask [n, t] (and the response budget `max_len`) to per-token
weights; the loss is sum_{i,t} w_{i,t} l_{i,t}. The weights are fixed by the whole minibatch,
so the weighted sums of its microbatches add up to the minibatch's and gradient accumulation
is exact. With |o_i| = sum_t m_{i,t} and n responses:

  token_mean           w = m / sum_i |o_i|          every token counts the same (PPO; DAPO's
                                                    token-level mean, Yu et al. 2025)
  seq_mean_token_mean  w = m / (n |o_i|)            each response's token mean, then the mean
                                                    over responses (GRPO's paper, GSPO)
  seq_mean_token_sum   w = m / n                    each response's token sum, then the mean
                                                    (REINFORCE / RLOO: -A sum_t log p)
  constant             w = m / (n max_len)          Dr. GRPO (Liu et al. 2025): a constant
                                                    normaliser, so a long response is not
                                                    down-weighted per token

`LOSS_AGGREGATIONS` is the only place naming them; `ALIASES` keeps the earlier names working.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from rlhf_jax import registry


def token_mean(mask: jax.Array, max_len: int) -> jax.Array:
  del max_len
  return mask / jnp.maximum(jnp.sum(mask), 1.0)


def seq_mean_token_mean(mask: jax.Array, max_len: int) -> jax.Array:
  del max_len
  return mask / (mask.shape[0] * jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1.0))


def seq_mean_token_sum(mask: jax.Array, max_len: int) -> jax.Array:
  del max_len
  return mask / mask.shape[0]


def constant(mask: jax.Array, max_len: int) -> jax.Array:
  return mask / (mask.shape[0] * max_len)


LOSS_AGGREGATIONS: dict[str, Callable] = {
    "token_mean": token_mean,
    "seq_mean_token_mean": seq_mean_token_mean,
    "seq_mean_token_sum": seq_mean_token_sum,
    "constant": constant,
}


def register(name: str, fn: Callable) -> None:
  """Adds an aggregation `fn(mask [n, t], max_len) -> per-token weights [n, t]` (a plugin's, say)."""
  registry.add(LOSS_AGGREGATIONS, "loss aggregation", name, fn)


# Names of earlier versions (`rl.loss_reduction`), still accepted.
ALIASES = {"token": "token_mean", "sequence_mean": "seq_mean_token_mean", "sequence": "seq_mean_token_sum"}


def resolve(name: str) -> str:
  """The registered name for `name` (an alias or a member); a clear error otherwise."""
  name = ALIASES.get(name, name)
  if name not in LOSS_AGGREGATIONS:
    raise ValueError(f"loss aggregation {name!r}: choose one of {', '.join(LOSS_AGGREGATIONS)}")
  return name


def token_weights(mask: jax.Array, aggregation: str, max_len: int = 1) -> jax.Array:
  """Per-token weights [n, t] of `aggregation` (a member or alias) for `mask`."""
  return LOSS_AGGREGATIONS[resolve(aggregation)](jnp.asarray(mask, jnp.float32), max_len)
