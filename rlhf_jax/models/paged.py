"""A paged KV cache: keys and values in a pool of fixed-size blocks that all rows share, each row's
tokens in the blocks its block table names, in order; a free list says which blocks hold nothing.

Continuous batching over a `RaggedCache` holds slots x (prompt + budget) positions whatever the
samples' lengths; here a row holds ceil(length / block_size) blocks, taken from the pool as it
grows (`grant`) and given back when its sample ends (`release`), so the cache is the tokens
alive, rounded up to a block each (vLLM's PagedAttention, Kwon et al. 2023). The pool is sized by
`sample.cache_blocks`; when a step needs more blocks than are free, the youngest samples are
preempted (`make_room`) and start again later: each sample draws from its own key, so it draws
the same tokens again (recomputation, vLLM's default preemption).

Attention over pages here is XLA's reference: a row's blocks gathered into one contiguous run
([rows, kv_heads, blocks_per_row x block_size, head_dim], one layer at a time), then the usual
masked attention. The last block of the pool is scratch: an idle row's table and the positions
a row has no block for point there, so their writes land where no query reads.
"""

import math
from typing import NamedTuple

import flax
import jax
import jax.numpy as jnp

from rlhf_jax.models.config import ModelConfig


@flax.struct.dataclass
class PagedCache:
  keys: tuple  # per layer [kv_heads, blocks + 1, block_size, head_dim]: the pool, scratch last
  values: tuple
  table: jax.Array  # [rows, blocks_per_row] int32: each row's blocks in order (scratch where none)
  lengths: jax.Array  # [rows] int32: the tokens each row holds
  free: jax.Array  # [blocks] bool: the free list
  kernel: str = flax.struct.field(pytree_node=False, default="xla")  # decode attention: PAGED_KERNELS

  @classmethod
  def empty(cls, cfg: ModelConfig, rows: int, length: int, blocks: int, block_size: int, dtype=None,
            kernel: str = "xla") -> "PagedCache":
    """A pool of `blocks` blocks for `rows` rows of at most `length` tokens each."""
    shape = (cfg.kv_heads, blocks + 1, block_size, cfg.dim_per_head)
    zeros = tuple(jnp.zeros(shape, dtype or cfg.compute_dtype) for _ in range(cfg.n_layers))
    return cls(zeros, zeros, jnp.full((rows, -(-length // block_size)), blocks, jnp.int32),
               jnp.zeros((rows,), jnp.int32), jnp.ones((blocks,), bool), kernel)

  @property
  def block_size(self) -> int:
    return self.keys[0].shape[2]

  @property
  def scratch(self) -> int:
    return self.free.shape[0]

  @property
  def capacity(self) -> int:
    """The positions a row's table spans."""
    return self.table.shape[1] * self.block_size

  def layer(self, i: int) -> "PagedLayer":
    return PagedLayer(self.keys[i], self.values[i], self.table, self.lengths, self.kernel)


class PagedLayer(NamedTuple):
  """What one Attention layer reads of a PagedCache (its `kv_cache`)."""
  keys: jax.Array  # [kv_heads, blocks + 1, block_size, head_dim]
  values: jax.Array
  table: jax.Array
  lengths: jax.Array
  kernel: str


def blocks_for(tokens, block_size: int):
  return -(-tokens // block_size)


def write(pool, new, table, lengths):
  """`new` [rows, kv_heads, q_len, head_dim] written at each row's positions lengths, lengths + 1,
  ... through its block table (positions past it: scratch)."""
  positions = lengths[:, None] + jnp.arange(new.shape[2])
  index = positions // pool.shape[2]
  block = jnp.take_along_axis(table, jnp.minimum(index, table.shape[1] - 1), axis=1)
  block = jnp.where(index < table.shape[1], block, pool.shape[1] - 1)
  return pool.at[:, block, positions % pool.shape[2]].set(new.transpose(1, 0, 2, 3))


def gather(pool, table):
  """Each row's blocks as one run, [rows, kv_heads, blocks_per_row x block_size, head_dim]."""
  rows, per_row = table.shape
  blocks = pool[:, table]  # [kv_heads, rows, per_row, block_size, head_dim]
  return blocks.transpose(1, 0, 2, 3, 4).reshape(rows, pool.shape[0], per_row * pool.shape[2], pool.shape[3])


def attend_paged(q, k, v, mask, layer: PagedLayer, attend, scale: float, sliding: bool = False):
  """The Attention layer's paged path: this call's keys and values written into the pool, then
  attention over each row's blocks: `attend` over them gathered (XLA's reference, any number of
  queries), or one query a row with a Pallas kernel (`pallas_decode`; not for a `sliding`
  layer, since the kernels read every token up to the row's length). `scale`: the scores'
  factor. Returns (out, (keys pool, values pool))."""
  pools = tuple(write(pool, new.transpose(0, 2, 1, 3).astype(pool.dtype), layer.table, layer.lengths)
                for pool, new in ((layer.keys, k), (layer.values, v)))
  if layer.kernel == "pallas" and q.shape[1] == 1 and not sliding:
    return pallas_decode(q, *pools, layer.table, layer.lengths + 1, scale), pools
  keys, values = (gather(pool, layer.table).astype(q.dtype) for pool in pools)
  return attend(q, keys, values, mask), pools


PAGED_KERNELS = ("xla", "pallas")  # sample.paged_attention


def pallas_decode(q, pool_k, pool_v, table, lengths, scale: float):
  """One query a row [rows, 1, heads, head_dim] over the first `lengths` tokens of its blocks,
  with JAX's Pallas paged-attention kernel: the TPU one on a TPU, else the GPU one (Triton;
  interpreted on a CPU, for the tests)."""
  backend = jax.default_backend()
  scaled = (q[:, 0] * scale).astype(q.dtype)
  per_row = table.shape[1]
  if backend == "tpu":
    from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention  # pylint: disable=g-import-not-at-top
    out = paged_attention(scaled, pool_k, pool_v, lengths, table, pages_per_compute_block=math.gcd(per_row, 8))
  else:
    from jax.experimental.pallas.ops.gpu.paged_attention import paged_attention  # pylint: disable=g-import-not-at-top
    out = paged_attention(scaled, pool_k, pool_v, table, lengths, pages_per_compute_block=math.gcd(per_row, 8),
                          k_splits=1, interpret=backend == "cpu")
  return out[:, None].astype(q.dtype)


def release(cache: PagedCache, rows) -> PagedCache:
  """The blocks of `rows` [n] bool back on the free list, their tables scratch."""
  gone = jnp.where(rows[:, None], cache.table, cache.scratch)
  free = cache.free.at[gone.ravel()].set(True, mode="drop")  # scratch is out of range: dropped
  return cache.replace(free=free, table=jnp.where(rows[:, None], cache.scratch, cache.table))


def take_blocks(cache: PagedCache, counts, width: int):
  """`counts[i]` free blocks for row i, [n, width] (scratch past its count), the rows served in
  order from the lowest free ids; and the free list without them. The caller makes sure enough
  are free."""
  first = jnp.cumsum(counts) - counts
  j = jnp.arange(width)
  free_ids = jnp.argsort(~cache.free, stable=True)
  blocks = jnp.where(j < counts[:, None], free_ids[jnp.minimum(first[:, None] + j, cache.scratch - 1)], cache.scratch)
  return blocks, cache.free.at[blocks.ravel()].set(False, mode="drop")  # scratch is out of range: dropped


def grant(cache: PagedCache, need) -> PagedCache:
  """A free block for each row where `need` [n] bool, at its table's next entry (the caller
  makes sure enough are free: `make_room`)."""
  blocks, free = take_blocks(cache, need.astype(jnp.int32), 1)
  entry = jnp.where(need, cache.lengths // cache.block_size, cache.table.shape[1])  # out of range: dropped
  return cache.replace(table=cache.table.at[jnp.arange(need.shape[0]), entry].set(blocks[:, 0], mode="drop"),
                       free=free)


def make_room(cache: PagedCache, active, age):
  """Blocks for every active row whose next token starts a new block: when fewer are free, the
  youngest active rows (fewest tokens drawn, `age`) are preempted first, their blocks released,
  never the oldest (a pool that holds one row's whole table lets it finish). Returns (cache,
  preempted [n] bool)."""
  need = active & (cache.lengths % cache.block_size == 0) & (cache.lengths < cache.capacity)
  deficit = jnp.sum(need) - jnp.sum(cache.free)
  victims = jnp.clip(deficit, 0, jnp.sum(active) - 1)
  order = jnp.argsort(jnp.where(active, age, jnp.iinfo(jnp.int32).max), stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
  preempted = active & (rank < victims)
  cache = release(cache, preempted)
  return grant(cache, need & ~preempted), preempted
