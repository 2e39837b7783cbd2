"""Preference pairs in a batch: one pair per row (chosen and rejected as two arrays), or packed.

A packed batch (`data.pack`, data/batches.py) has rows `tokens`, `mask`, `response` and
`segments` holding whole pairs: pair j of a row is segments 2j + 1 (chosen) and 2j + 2
(rejected), and `loss_mask` [rows, slots] marks which of the row's slots hold a pair. Either
way the steps see each pair-level quantity as a flat [pairs] array, weighted by
`pair_weights`, so the losses are those of the same pairs one per row (tests/training). With
`data.share_prompt`, a pair's rejected sequence holds no copy of the prompt: it attends to its
chosen one's (rows `shared`, `positions`; data/batches.py).
"""

import jax
import jax.numpy as jnp

from rlhf_jax.models import moe


def is_packed(batch: dict) -> bool:
  return "segments" in batch


def packed_layout(batch: dict) -> dict:
  """The model's keyword arguments for packed rows: segments, and with a shared prompt
  (`data.share_prompt`) the shared tokens and every token's position."""
  return {k: batch[k] for k in ("segments", "shared", "positions") if k in batch}


def pair_weights(batch: dict) -> jax.Array:
  """1 for each real pair, [pairs] (loss_mask is [rows, 1] one per row, [rows, slots] packed)."""
  return batch["loss_mask"].reshape(-1).astype(jnp.float32)


def pair_labels(batch: dict) -> jax.Array:
  """P(chosen is preferred) of each pair, [pairs], laid out as `pair_weights` (1 where absent)."""
  return batch["label"].reshape(-1) if "label" in batch else jnp.ones_like(pair_weights(batch))


def segment_count(batch: dict) -> int:
  """Sequence slots per packed row: chosen and rejected of each pair slot."""
  return 2 * batch["loss_mask"].shape[1]


def segment_onehot(segments: jax.Array, count: int) -> jax.Array:
  """[batch, time, count]: token t belongs to segment s + 1 (pads, 0, to none)."""
  return segments[:, :, None] == jnp.arange(1, count + 1)


def segment_sums(values: jax.Array, segments: jax.Array, count: int) -> jax.Array:
  """sum of values[b, t] over each segment 1..count of row b, [batch, count]."""
  return jnp.einsum("bt,bts->bs", values.astype(jnp.float32), segment_onehot(segments, count).astype(jnp.float32))


def segment_ends(segments: jax.Array, count: int) -> jax.Array:
  """Position of each segment's last token, [batch, count] (0 for a segment the row lacks)."""
  positions = jnp.arange(segments.shape[1])[None, :, None]
  return jnp.max(jnp.where(segment_onehot(segments, count), positions, 0), axis=1)


def chosen_and_rejected(per_segment: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[batch, 2 * slots] per-segment values -> (chosen, rejected), each flat [pairs]."""
  return per_segment[:, 0::2].reshape(-1), per_segment[:, 1::2].reshape(-1)


def mean_loss(sums: dict, normalizer, router, mask, model_cfg, router_aux: bool):
  """(loss, sums): the pairs' summed NLL over the whole batch's `normalizer` pairs; with
  `router_aux` (an MoE model training: moe.router_aux_applies) plus router_aux_coef times the
  load-balancing loss of its pass (`router` over `mask`'s tokens), scaled by this microbatch's
  share of the batch's pairs (gradient accumulation)."""
  loss = sums["nll"] / normalizer
  if not router_aux:
    return loss, sums
  return moe.with_router_aux(loss, sums, router, mask, model_cfg.router_aux_coef, sums["pairs"] / normalizer)
