"""The paged KV cache (models/paged.py) and continuous batching over it: blocks granted and
released through the free list, the youngest samples preempted when blocks run out, and the
static sampler's tokens drawn whatever the pool's size, with XLA's attention over the pages or
the Pallas kernel (interpreted on the CPU)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models import continuous, paged
from rlhf_jax.models.paged import PagedCache
from rlhf_jax.models.sampling import SamplingParams
from rlhf_jax.models.transformer import Transformer
from tests.conftest import small_model
from tests.models.test_continuous import NEW, PAD, PROMPT, draw, prompts_and_lengths
from tests.models.test_transformer import STYLES, init


def test_blocks_come_from_the_free_list_and_the_youngest_rows_make_room():
  cache = PagedCache.empty(small_model(), rows=3, length=8, blocks=4, block_size=2)
  assert cache.table.shape == (3, 4) and int(cache.scratch) == 4
  # Rows 0 and 1 at a block's start need one each; row 2 is idle.
  cache = cache.replace(lengths=jnp.array([0, 0, 5]))
  active = jnp.array([True, True, False])
  cache, preempted = paged.make_room(cache, active, age=jnp.array([0, 0, 0]))
  assert not preempted.any() and cache.table[:, 0].tolist() == [0, 1, 4] and cache.free.tolist() == [0, 0, 1, 1]
  # Three rows short of blocks with two free, then with none: the youngest go first, never the oldest.
  cache = cache.replace(lengths=jnp.array([2, 2, 0]), table=cache.table.at[2, 0].set(4))
  cache, preempted = paged.make_room(cache, jnp.array([True, True, True]), age=jnp.array([5, 3, 1]))
  assert preempted.tolist() == [False, False, True] and cache.table[:2, 1].tolist() == [2, 3]
  assert not cache.free.any()
  cache, preempted = paged.make_room(cache.replace(lengths=jnp.array([4, 4, 0])), jnp.array([True, True, False]),
                                     age=jnp.array([9, 4, 0]))
  assert preempted.tolist() == [False, True, False]  # row 1's two blocks freed: row 0 takes one
  assert cache.table[1].tolist() == [4, 4, 4, 4] and int(cache.free.sum()) == 1
  assert cache.table[0, 2] in (1, 3)
  cache = paged.release(cache, jnp.array([True, False, False]))
  assert int(cache.free.sum()) == 4 and cache.table[0].tolist() == [4, 4, 4, 4]


def draw_paged(cfg, params, slots, blocks, block_size, kernel="xla"):
  prompts, mask, lengths = prompts_and_lengths()
  fn = functools.partial(continuous.sample_paged, Transformer(cfg), slots=slots, blocks=blocks, block_size=block_size,
                         max_new_tokens=NEW, stop_ids=(-1,), pad_id=PAD, kernel=kernel, with_preemptions=True)
  return jax.jit(fn)(params, prompts, mask, jax.random.key(7), SamplingParams.make(temperature=1.3, top_k=40),
                     stop_at=lengths)


@pytest.mark.parametrize("style,pools", [("gpt2", ((4, 9, 4, "xla"), (4, 5, 8, "xla"))),
                                         ("llama_gqa", ((3, 40, 4, "xla"), (4, 9, 4, "pallas"))),
                                         ("gemma3", ((4, 9, 4, "pallas"),))])
def test_a_paged_cache_of_any_size_draws_the_static_samplers_tokens(style, pools):
  """Pools of a table and a bit (preempting), blocks of 8, a roomy pool; the Pallas kernel
  (interpreted) on grouped-query heads."""
  cfg = small_model(**STYLES[style])
  _, params = init(cfg)
  static = draw(cfg, params, 0, SamplingParams.make(temperature=1.3, top_k=40), stop_ids=(-1,), stop_at=True)
  for slots, blocks, block_size, kernel in pools:
    out, preemptions = draw_paged(cfg, params, slots, blocks, block_size, kernel)
    assert (int(preemptions) > 0) == (blocks < 3 * (PROMPT + NEW) // block_size), (blocks, int(preemptions))
    np.testing.assert_array_equal(out.tokens, static.tokens)
    np.testing.assert_array_equal(out.mask, static.mask)
    np.testing.assert_allclose(out.logprobs, static.logprobs, atol=2e-5)


def test_a_pool_smaller_than_one_sample_is_one_line():
  cfg = small_model()
  _, params = init(cfg)
  with pytest.raises(ValueError, match="must hold one sample's 9 blocks of 4"):
    draw_paged(cfg, params, 4, 8, 4)
