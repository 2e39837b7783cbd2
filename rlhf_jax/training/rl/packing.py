"""Packed RL updates: the trajectories of a (mini)batch packed into rows by length, inside the
compiled iteration, so the update's forward and backward passes run on tokens, not on padding.

A trajectory is its padded row's span from its first real token (or the prompt's last column,
which the first response token is predicted from) to its last. `pack` places the spans into
rows as wide as the padded ones, longest first, each into the first row with room (first-fit
decreasing); each span keeps its own segment id, so its tokens attend within it and its
positions restart at 0 (models/transformer.py): the model computes exactly what it computes on
the padded row. The packed rows are grouped into microbatches of `rows` rows; `count` of them
hold trajectories, a number known only on the device, so the caller loops over them with
`lax.while_loop` (the work is the tokens', rounded up to a microbatch).

`unpack` brings a microbatch's per-token outputs back to the padded response layout, over a
`base` for the trajectories it does not hold, so the losses read them unchanged
(rl_update.loss_of_outputs): a loss whose terms are sums over trajectories (every estimator and
aggregation here) sums over the microbatches to the padded batch's.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rlhf_jax.models.transformer import last_token_index


class Packing(NamedTuple):
  tokens: jax.Array  # [microbatches, rows, width]
  mask: jax.Array  # [microbatches, rows, width] the padded rows' mask, moved with their tokens
  segments: jax.Array  # [microbatches, rows, width] each trajectory's index + 1; 0 where none is
  row: jax.Array  # [n] the packed row each trajectory is in (counted over all microbatches)
  shift: jax.Array  # [n] packed column = padded column + shift
  end: jax.Array  # [n] the padded column after the span; 0 for a trajectory left out
  count: jax.Array  # int32: the microbatches that hold trajectories

  @property
  def rows(self) -> int:
    return self.tokens.shape[1]

  def microbatch(self, j):
    """(tokens, mask, segments) of microbatch j, each [rows, width]."""
    return self.tokens[j], self.mask[j], self.segments[j]

  def holds(self, j) -> jax.Array:
    """[n] bool: the trajectories microbatch j holds."""
    return (self.row // self.rows == j) & (self.end > 0)


def spans(mask, prompt_len: int):
  """(start, length) of each row's trajectory: from its first real token, or the prompt's last
  column if that comes first, to its last real token."""
  start = jnp.minimum(jnp.argmax(mask.astype(bool), axis=1), prompt_len - 1)
  end = jnp.maximum(last_token_index(mask), prompt_len - 1) + 1
  return start, end - start


def first_fit_decreasing(lengths, width: int):
  """(row, offset) of each length placed in rows of `width`, longest first, each into the first
  row with room; and the rows used (a prefix: a row opens only when none before it has room)."""
  n = lengths.shape[0]
  order = jnp.argsort(-lengths, stable=True)

  def place(i, carry):
    fill, row, offset = carry
    j = order[i]
    r = jnp.argmax(fill + lengths[j] <= width)
    return fill.at[r].add(lengths[j]), row.at[j].set(r), offset.at[j].set(fill[r])

  zeros = jnp.zeros(n, jnp.int32)
  fill, row, offset = jax.lax.fori_loop(0, n, place, (zeros, zeros, zeros))
  return row, offset, jnp.sum(fill > 0)


def pack(tokens, mask, include, prompt_len: int, rows: int) -> Packing:
  """The trajectories of padded rows `tokens`, `mask` [n, width] where `include` [n] says, in
  microbatches of `rows` packed rows (enough for n rows of padding)."""
  n, width = tokens.shape
  start, length = spans(mask, prompt_len)
  length = jnp.where(include, length, 0).astype(jnp.int32)
  row, offset, used = first_fit_decreasing(length, width)
  shift = offset - start
  microbatches = -(-n // rows)
  cols = jnp.arange(width)
  inside = (cols >= start[:, None]) & (cols < (start + length)[:, None])
  size = microbatches * rows * width
  target = jnp.where(inside, row[:, None] * width + cols + shift[:, None], size).ravel()  # size: dropped

  def place(values):
    packed = jnp.zeros(size, values.dtype).at[target].set(values.ravel(), mode="drop")
    return packed.reshape(microbatches, rows, width)

  segments = jnp.broadcast_to(jnp.arange(1, n + 1, dtype=jnp.int32)[:, None], (n, width))
  return Packing(place(tokens), place(mask.astype(jnp.int32)), place(segments), row, shift,
                 jnp.where(length > 0, start + length, 0), (used + rows - 1) // rows)


def unpack(packing: Packing, j, per_token, base, prompt_len: int):
  """[n, response] outputs: response token t of each trajectory microbatch j holds from
  `per_token` [rows, width - 1] (column c: the output for the token at packed column c + 1,
  predicted from column c), `base` elsewhere (other trajectories, padding)."""
  width = per_token.shape[1] + 1
  cols = prompt_len + jnp.arange(base.shape[1])
  packed_cols = cols + packing.shift[:, None] - 1
  local_row = packing.row - j * packing.rows
  index = jnp.clip(local_row, 0, packing.rows - 1)[:, None] * (width - 1) + jnp.clip(packed_cols, 0, width - 2)
  valid = packing.holds(j)[:, None] & (cols < packing.end[:, None])
  return jnp.where(valid, per_token.reshape(-1)[index], base)
