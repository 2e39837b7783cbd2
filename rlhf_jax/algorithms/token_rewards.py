"""Rewards that need only the response's token ids and masks: scored inside the compiled
iteration (no decoding, no host round trip), named in `reward.fns` as every source is
(rewards.py), weighted by `reward.weights`, logged as `reward/NAME`. Each is a pure function
`fn(tokens [n, T], mask [n, T], ended [n], TokenRewardParams) -> [n]`; `mask` is 1 on the
policy's tokens (a multi-turn trajectory's loss mask: the environment's tokens never count).

  length   -(the policy's tokens) / max_new_tokens, in [-1, 0]: a linear pressure towards
           shorter responses (Kimi k1.5's length penalty in its simplest form), whose strength
           is its weight; DAPO's soft overlong penalty is `rl.overlong_buffer`
  format   1.0 where the policy's tokens hold `reward.format_text`'s ids in a row, else 0.0: a
           format check on ids. The text is encoded alone: exact for the embedded tokenizers
           (a text's ids are the same anywhere); with a BPE tokenizer write the text as it is
           tokenised in context (a leading space, say)

The no-EOS penalty (`rl.no_eos_penalty`) is in the graph too: it replaces a score, not adds.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from rlhf_jax import registry


class TokenRewardParams(NamedTuple):
  max_new_tokens: int
  format_ids: tuple = ()  # reward.format_text's ids (static)


def length(tokens, mask, ended, params: TokenRewardParams) -> jax.Array:
  del tokens, ended
  return -jnp.sum(mask, axis=1).astype(jnp.float32) / params.max_new_tokens


def contains(tokens, mask, pattern: tuple) -> jax.Array:
  """[n] whether some window of len(pattern) tokens, all of them the policy's, equals `pattern`."""
  width, length_ = len(pattern), tokens.shape[1]
  if not width or width > length_:
    return jnp.zeros(tokens.shape[:1], bool)
  starts = length_ - width + 1
  match = jnp.ones((tokens.shape[0], starts), bool)
  for offset, token in enumerate(pattern):  # static: one shifted compare per pattern token
    match &= (tokens[:, offset:offset + starts] == token) & (mask[:, offset:offset + starts] > 0)
  return jnp.any(match, axis=1)


def format_check(tokens, mask, ended, params: TokenRewardParams) -> jax.Array:
  del ended
  return contains(tokens, mask, params.format_ids).astype(jnp.float32)


TOKEN_REWARDS = {"length": length, "format": format_check}


def register(name: str, fn: Callable) -> None:
  """Adds a token reward `fn(tokens, mask, ended, TokenRewardParams) -> [n]` (a plugin's)."""
  registry.add(TOKEN_REWARDS, "token reward", name, fn)


def weighted_sum(components: tuple, tokens, mask, ended, params: TokenRewardParams):
  """({NAME: [n]} of the (name, weight) components, their weighted sum [n])."""
  scores = {name: TOKEN_REWARDS[name](tokens, mask, ended, params) for name, _ in components}
  total = sum((weight * scores[name] for name, weight in components), jnp.zeros(tokens.shape[:1], jnp.float32))
  return scores, total
