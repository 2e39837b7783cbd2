"""The device side of multi-turn rollouts: every trajectory's context in one ragged KV cache
(models/transformer.py: RaggedCache), each turn prefilling only what is new since the last
(the environment's answer) and decoding only the rows still going.

Between turns a row's cache holds its context so far and all the tokens its last turn
sampled; the trajectory kept a prefix of those (cut at the call's close) and appended an
observation. The row's length is cut back to what is still its context, less its last token,
which is fed again with the observation (so every row's next logits come out of the prefill,
even where the environment answered nothing). Rows that are done are left out: the live ones
are gathered into a batch of the next power of two (at least `min_rows`, the data-parallel
ways), decoded, and scattered back; each batch size and block width compiles once. Each row
draws from its own key (the turn's, folded with the row's index), so its tokens do not depend
on which rows share its batch, nor on the mesh.
"""

import dataclasses
import functools

import jax
import numpy as np

from rlhf_jax import sharding
from rlhf_jax.models.sampling import SampleOutput, extend
from rlhf_jax.models.transformer import RaggedCache

BLOCK_ROUNDING = 8  # a block's width rounds up to this: fewer shapes to compile


def turn_step(cache: RaggedCache, params, rows, block, block_mask, starts, live, keys, settings, *, model, **kwargs):
  """The compiled turn: the `rows` of the cache cut back to `starts`, `block` prefilled, up to
  max_new_tokens sampled for the `live` ones (each from its own of `keys`), the rows written
  back. (SampleOutput, cache)."""
  take = lambda x: x[rows]
  sub = RaggedCache(tuple(map(take, cache.keys)), tuple(map(take, cache.values)), starts)
  out, sub = extend(model, params, sub, block, block_mask, keys, settings, live=live, **kwargs)
  put = lambda full, part: full.at[rows].set(part)
  return out, RaggedCache(tuple(map(put, cache.keys, sub.keys)), tuple(map(put, cache.values, sub.values)),
                          cache.lengths.at[rows].set(sub.lengths))


@dataclasses.dataclass
class TurnSampler:
  """The compiled turn and what it needs; `session` gives multi_turn.roll_out its
  `sample(contexts, live, key) -> SampleOutput` over one fresh cache."""
  step: object  # jitted (cache, params, rows, block, block_mask, starts, live, key, settings) -> (out, cache)
  empty: object  # (rows, capacity) -> an empty RaggedCache
  capacity: int  # tokens a row's cache holds: the widest context plus a turn
  min_rows: int = 1  # the smallest batch decoded (the data-parallel ways)

  def session(self, params, settings, rows: int) -> "Turns":
    return Turns(self, params, settings, self.empty(rows, self.capacity), [[] for _ in range(rows)])


@dataclasses.dataclass
class Turns:
  """One rollout's turns on one cache (host bookkeeping: what each row's cache holds)."""
  sampler: TurnSampler
  params: object
  settings: object
  cache: RaggedCache
  cached: list  # per row: the ids its cache holds, in order (its context, then what it sampled)

  def __call__(self, contexts: list, live: np.ndarray, key) -> SampleOutput:
    """Each live row's next turn from its whole context so far (only the new part prefilled);
    host arrays [rows, turn_tokens], nothing for the rows not live."""
    n, live = len(contexts), np.asarray(live, bool)
    alive = np.flatnonzero(live)
    size = min(n, max(self.sampler.min_rows, 1 << max(len(alive) - 1, 0).bit_length()))
    rows = np.concatenate([alive, np.flatnonzero(~live)[:size - len(alive)]]).astype(np.int32)
    starts, blocks = [], []
    for i in rows:
      valid = common_prefix(self.cached[i], contexts[i]) if live[i] else 0
      start = max(valid - 1, 0)  # its last token fed again: the next logits come out of the prefill
      starts.append(start)
      blocks.append(list(contexts[i][start:]) if live[i] else [])
    width = -(-max(max(map(len, blocks)), 1) // BLOCK_ROUNDING) * BLOCK_ROUNDING
    block, block_mask = np.zeros((size, width), np.int32), np.zeros((size, width), np.int32)
    for r, ids in enumerate(blocks):
      block[r, :len(ids)], block_mask[r, :len(ids)] = ids, 1
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, rows)  # each row's own: the same in any batch
    out, self.cache = self.sampler.step(self.cache, self.params, rows, block, block_mask,
                                        np.asarray(starts, np.int32), live[rows], keys, self.settings)
    out = jax.device_get(out)
    full = jax.tree.map(lambda x: np.zeros((n,) + x.shape[1:], x.dtype), out)  # a turn records no experts (None)
    for r, i in enumerate(rows):
      if live[i]:
        for field, part in zip(jax.tree.leaves(full), jax.tree.leaves(out)):
          field[i] = part[r]
        self.cached[i] = list(contexts[i]) + out.tokens[r][out.mask[r] > 0].tolist()
    return full


def common_prefix(a: list, b: list) -> int:
  n = min(len(a), len(b))
  differs = np.flatnonzero(np.asarray(a[:n], np.int64) != np.asarray(b[:n], np.int64))
  return int(differs[0]) if len(differs) else n


def turn_sampler(model, params_shardings, mesh, rules, *, turn_tokens: int, capacity: int, stop_ids: tuple,
                 pad_id: int) -> TurnSampler:
  """A TurnSampler on `mesh`, the params laid out as `params_shardings`; a turn ends at any of
  `stop_ids` (EOS first)."""
  fn = functools.partial(turn_step, model=model, max_new_tokens=turn_tokens, stop_ids=stop_ids, pad_id=pad_id)
  rows = sharding.batch_sharding(mesh)  # the cache's rows split as a batch's
  step = jax.jit(sharding.with_rules(fn, mesh, rules), donate_argnums=0,
                 in_shardings=(rows, params_shardings, None, None, None, None, None, None, None),
                 out_shardings=(sharding.replicated(mesh), rows))
  empty = jax.jit(lambda n, length: RaggedCache.empty(model.cfg, n, length), static_argnums=(0, 1),
                  out_shardings=rows)
  # Room for a block's padding too: a write that overran the cache would be moved back over the row.
  return TurnSampler(step, empty, capacity + BLOCK_ROUNDING, min_rows=mesh.shape["data"] * mesh.shape["fsdp"])
