"""Multi-turn sampling from a ragged KV cache (training/rl/turn_cache.py, models/sampling.py:
extend): a turn continued from the cache, with only the new tokens prefilled and the rows that
are done left out, samples what a sampler given the whole context from scratch samples."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import sharding
from rlhf_jax.models.sampling import SamplingParams, sample
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.rl import turn_cache
from tests.conftest import small_model
from configs import common
from tests.models.test_transformer import STYLES, init

EOS, PAD, TURN = 258, 256, 6
GREEDY = SamplingParams.make(greedy=True)


def from_scratch(cfg, params, contexts: list):
  """`sample` (the one-turn sampler) on each context, left-padded: the reference."""
  width = max(map(len, contexts))
  tokens = np.full((len(contexts), width), PAD, np.int32)
  mask = np.zeros_like(tokens)
  for i, ids in enumerate(contexts):
    tokens[i, width - len(ids):], mask[i, width - len(ids):] = ids, 1
  fn = jax.jit(functools.partial(sample, Transformer(cfg), max_new_tokens=TURN, stop_ids=(EOS,), pad_id=PAD))
  return jax.device_get(fn(params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0), GREEDY))


@pytest.mark.parametrize("style", ["gpt2", "llama_gqa"])
def test_a_turn_continued_from_the_cache_samples_what_the_whole_context_does(style):
  cfg = small_model(**STYLES[style])
  _, params = init(cfg)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  sampler = turn_cache.turn_sampler(Transformer(cfg), None, mesh, common.DEFAULT_RULES, turn_tokens=TURN, capacity=48,
                                    stop_ids=(EOS,), pad_id=PAD)
  rng = np.random.default_rng(0)
  contexts = [rng.integers(0, 250, n).tolist() for n in (5, 9, 3, 7)]
  turns = sampler.session(params, GREEDY, len(contexts))
  first = turns(contexts, np.ones(4, bool), jax.random.key(0))
  reference = from_scratch(cfg, params, contexts)
  np.testing.assert_array_equal(first.tokens, reference.tokens)
  np.testing.assert_allclose(first.logprobs, reference.logprobs, atol=2e-5)
  # Turn 2: row 0 keeps 2 of its tokens and gets a 3-token observation, row 1 keeps all, row 2
  # keeps none and gets one token, row 3 is done (left out: its batch is rows 0-2 and row 3 padding).
  observations = [[11, 12, 13], [], [14]]
  kept = [2, TURN, 0]
  contexts = [c + first.tokens[i, :kept[i]].tolist() + observations[i] for i, c in enumerate(contexts[:3])] + [
      contexts[3]]
  second = turns(contexts, np.array([True, True, True, False]), jax.random.key(1))
  reference = from_scratch(cfg, params, contexts[:3])
  np.testing.assert_array_equal(second.tokens[:3], reference.tokens)
  np.testing.assert_allclose(second.logprobs[:3], reference.logprobs, atol=2e-5)
  assert second.mask[3].sum() == 0  # done: not decoded


def test_a_rows_draws_do_not_depend_on_the_rows_sharing_its_batch():
  cfg = small_model()
  _, params = init(cfg)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  sampler = turn_cache.turn_sampler(Transformer(cfg), None, mesh, common.DEFAULT_RULES, turn_tokens=TURN,
                                    capacity=32, stop_ids=(EOS,), pad_id=PAD)
  contexts = [np.random.default_rng(i).integers(0, 250, 4 + i).tolist() for i in range(4)]
  warm = SamplingParams.make(temperature=1.5)
  together = sampler.session(params, warm, 4)(contexts, np.ones(4, bool), jax.random.key(3))
  alone = sampler.session(params, warm, 4)(contexts, np.array([False, False, True, False]), jax.random.key(3))
  np.testing.assert_array_equal(alone.tokens[2], together.tokens[2])  # a batch of 4, then of 1
  np.testing.assert_allclose(alone.logprobs[2], together.logprobs[2], atol=2e-5)
  assert alone.mask[[0, 1, 3]].sum() == 0
