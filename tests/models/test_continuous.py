"""Continuous batching: every slot count draws the static sampler's tokens, with the training
model's log-probs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models import continuous
from rlhf_jax.models.sampling import SamplingParams, sample
from rlhf_jax.models.transformer import Transformer
from tests.conftest import LLAMA, small_model
from tests.models.test_sampling import EOS, PAD, rescore
from tests.models.test_transformer import STYLES, init

ROWS, PROMPT, NEW = 10, 9, 24


def prompts_and_lengths(seed=0):
  """Left-padded prompts of 1 to PROMPT tokens and each row's replayed length (stop_at)."""
  rng = np.random.default_rng(seed)
  real = rng.integers(1, PROMPT + 1, ROWS)
  mask = np.arange(PROMPT)[None] >= PROMPT - real[:, None]
  tokens = rng.integers(0, 256, (ROWS, PROMPT)) * mask
  return jnp.asarray(tokens, jnp.int32), jnp.asarray(mask), jnp.asarray(rng.integers(1, NEW + 1, ROWS), jnp.int32)


def draw(cfg, params, slots, settings, stop_ids=(EOS,), stop_at=None, seed=0, batching=None):
  prompts, mask, lengths = prompts_and_lengths(seed)
  fn = functools.partial(continuous.generate, Transformer(cfg), max_new_tokens=NEW, stop_ids=stop_ids, pad_id=PAD,
                         batching=batching or ("continuous" if slots else "static"), slots=slots)
  return jax.jit(fn)(params, prompts, mask, jax.random.key(7), settings, stop_at=lengths if stop_at else None)


@pytest.mark.parametrize("style,slot_counts", [("gpt2", (3, 16)), ("llama_gqa", (4,)), ("gemma3", (4,))])
def test_every_slot_count_draws_the_static_samplers_tokens(style, slot_counts):
  cfg = small_model(**STYLES[style])
  _, params = init(cfg)
  settings = SamplingParams.make(temperature=1.3, top_k=40)
  static = draw(cfg, params, 0, settings, stop_ids=(-1,), stop_at=True)
  assert len(set(np.asarray(static.mask.sum(1)).tolist())) > 5  # lengths spread: slots change hands
  for slots in slot_counts:  # 3: admissions of one (a quarter of 3 slots); 16: more slots than rows
    out = draw(cfg, params, slots, settings, stop_ids=(-1,), stop_at=True)
    np.testing.assert_array_equal(out.tokens, static.tokens)
    np.testing.assert_array_equal(out.mask, static.mask)
    np.testing.assert_allclose(out.logprobs, static.logprobs, atol=2e-5)


def test_rows_stop_at_their_eos_and_the_log_probs_are_the_trainers():
  cfg = small_model()
  _, params = init(cfg)
  settings = SamplingParams.make(temperature=0.7)
  static = draw(cfg, params, 0, settings)
  eos = int(np.bincount(np.asarray(static.tokens[:, :4]).ravel()).argmax())  # a token drawn early: rows end
  static, out = draw(cfg, params, 0, settings, stop_ids=(eos,)), draw(cfg, params, 4, settings, stop_ids=(eos,))
  ended = np.asarray(static.mask.sum(1)) < NEW
  assert ended.sum() >= 3
  np.testing.assert_array_equal(out.tokens, static.tokens)
  np.testing.assert_array_equal(out.mask, static.mask)
  prompts, mask, _ = prompts_and_lengths()
  _, trainer = rescore(cfg, params, prompts, mask, out, temperature=0.7)
  real = np.asarray(out.mask) > 0
  np.testing.assert_allclose(np.asarray(out.logprobs)[real], np.asarray(trainer)[real], atol=2e-5)
  assert (np.asarray(out.tokens)[~real] == PAD).all()


@pytest.mark.parametrize("batching,slots", [("static", 0), ("continuous", 4), ("paged", 4)])
def test_rows_stop_at_any_stop_id_kept_as_their_last_token(batching, slots):
  """EOS and a second stop id (a chat checkpoint's end of turn) end rows alike in every batching:
  each row is the draw without stop ids up to its first stop id, which it keeps (mask 1)."""
  cfg = small_model()
  _, params = init(cfg)
  settings = SamplingParams.make(temperature=0.7)
  free = draw(cfg, params, 0, settings, stop_ids=(-1,))
  tokens = np.asarray(free.tokens)
  eos, end_of_turn = (int(t) for t in np.argsort(np.bincount(tokens[:, :4].ravel()))[::-1][:2])  # drawn early
  out = draw(cfg, params, slots, settings, stop_ids=(eos, end_of_turn), batching=batching)
  ends = [next((j for j, t in enumerate(row) if t in (eos, end_of_turn)), NEW - 1) for row in tokens]
  kept = np.arange(NEW)[None] <= np.array(ends)[:, None]
  assert any(tokens[i, j] == end_of_turn for i, j in enumerate(ends))  # some rows end on the second id
  np.testing.assert_array_equal(out.mask, kept)
  np.testing.assert_array_equal(out.tokens, np.where(kept, tokens, PAD))
  np.testing.assert_allclose(np.asarray(out.logprobs)[kept], np.asarray(free.logprobs)[kept], atol=2e-5)


def test_a_samples_tokens_do_not_depend_on_the_rows_beside_it():
  """Each row draws from its own key: the static sampler too, which drew one key per step for
  the whole batch before continuous batching."""
  cfg = small_model()
  _, params = init(cfg)
  prompts, mask, _ = prompts_and_lengths()
  fn = jax.jit(functools.partial(sample, Transformer(cfg), max_new_tokens=NEW, stop_ids=(-1,), pad_id=PAD))
  settings = SamplingParams.make(temperature=1.0)
  whole = fn(params, prompts, mask, jax.random.key(3), settings)
  first = fn(params, prompts[:4], mask[:4], jax.random.key(3), settings)
  np.testing.assert_array_equal(first.tokens, whole.tokens[:4])


def test_slots_resolve_from_the_rows():
  assert continuous.slots_for("static", 8, 64) == 0
  assert continuous.slots_for("continuous", 0, 64) == 16
  assert continuous.slots_for("continuous", 0, 3) == 1
  assert continuous.slots_for("continuous", 100, 64) == 64
  assert continuous.tail_sizes(16) == [8, 4, 2]
  assert continuous.slots_for("paged", 0, 64) == 16
  assert continuous.paged_blocks(0, 16, 100, 16) == 56 and continuous.paged_blocks(3, 16, 100, 16) == 7
  with pytest.raises(ValueError, match="sample.batching='pages'"):
    continuous.slots_for("pages", 0, 64)


def test_an_moe_models_experts_are_the_static_samplers_whatever_the_batching():
  """Router replay: every row's prompt experts (left-padded, 0 at the pads) and each response
  token's, 0 after its end, equal the static sampler's as slots finish and refill, with rows
  ending at EOS, and through a paged pool small enough to preempt."""
  cfg = small_model(**LLAMA, n_experts=8, experts_per_token=2, d_expert=32)
  _, params = init(cfg)
  settings = SamplingParams.make(temperature=1.3)
  static = draw(cfg, params, 0, settings, stop_ids=(-1,), stop_at=True)
  eos = int(np.bincount(np.asarray(static.tokens[:, :4]).ravel()).argmax())  # a token drawn early: rows end
  for stop_ids, stop_at in (((-1,), True), ((eos,), None)):
    static = draw(cfg, params, 0, settings, stop_ids=stop_ids, stop_at=stop_at)
    assert static.experts.shape == (ROWS, cfg.n_layers, PROMPT + NEW, 2)
    prompt_mask = np.asarray(prompts_and_lengths()[1])
    assert (np.asarray(static.experts[:, :, :PROMPT]).any(axis=(1, 3)) <= prompt_mask).all()  # 0 at the pads
    for batching, slots in (("continuous", 3), ("continuous", 4), ("paged", 4)):
      out = draw(cfg, params, slots, settings, stop_ids=stop_ids, stop_at=stop_at, batching=batching)
      np.testing.assert_array_equal(out.tokens, static.tokens)
      np.testing.assert_array_equal(out.experts, static.experts)
  prompts, mask, lengths = prompts_and_lengths()
  fn = functools.partial(continuous.sample_paged, Transformer(cfg), slots=4, blocks=9, block_size=4,
                         max_new_tokens=NEW, stop_ids=(-1,), pad_id=PAD, with_preemptions=True)
  (out, preemptions) = jax.jit(fn)(params, prompts, mask, jax.random.key(7), settings, stop_at=lengths)
  assert preemptions > 0
  np.testing.assert_array_equal(out.experts, draw(cfg, params, 0, settings, stop_ids=(-1,), stop_at=True).experts)


def test_a_dense_model_records_no_experts():
  cfg = small_model()
  _, params = init(cfg)
  for slots, batching in ((0, "static"), (4, "continuous"), (4, "paged")):
    assert draw(cfg, params, slots, SamplingParams.make(), batching=batching).experts is None
