"""The KV-cache sampler: agrees with full forward passes, stops at EOS, filters, no recompiles."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.models import sampling
from rlhf_jax.models.logits import first_argmax
from rlhf_jax.models.sampling import SamplingParams, filter_logits, in_compute_dtype, sample, segment_ends
from rlhf_jax.models.transformer import Transformer
from tests.conftest import small_model
from tests.models.test_transformer import init, left_padded_batch

EOS, PAD = 258, 256


def make_sampler(cfg, max_new_tokens=10, stop_ids=(EOS,)):
  return jax.jit(functools.partial(sample, Transformer(cfg), max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                                   pad_id=PAD))


def rescore(cfg, params, prompts, prompt_mask, out, temperature=1.0):
  """Log-probs of the sampled tokens by one full forward pass over prompt + response."""
  tokens = jnp.concatenate([prompts, out.tokens], axis=1)
  mask = jnp.concatenate([prompt_mask, out.mask.astype(bool)], axis=1)
  logits = Transformer(cfg).apply({"params": params}, tokens, mask).logits
  logits = logits[:, prompts.shape[1] - 1:-1] / temperature
  return logits, jnp.take_along_axis(jax.nn.log_softmax(logits), out.tokens[..., None], -1)[..., 0]


def test_greedy_and_logprobs_match_full_forward():
  cfg = small_model()
  _, params = init(cfg)
  prompts, mask = left_padded_batch()
  out = make_sampler(cfg)(params, prompts, mask, jax.random.key(0), SamplingParams.make(greedy=True))
  logits, logprobs = rescore(cfg, params, prompts, mask, out)
  live = np.asarray(out.mask) > 0
  np.testing.assert_array_equal(np.argmax(logits, -1)[live], np.asarray(out.tokens)[live])
  np.testing.assert_allclose(np.asarray(out.logprobs)[live], np.asarray(logprobs)[live], atol=1e-5)


def test_a_cache_grown_in_segments_decodes_as_one_cache_would():
  """140 new tokens decode in 2 segments (the cache lengthened once) and still match one full
  forward pass."""
  assert segment_ends(140) == [70, 140] and segment_ends(256) == [64, 128, 192, 256] and segment_ends(63) == [63]
  cfg = small_model(max_len=160)
  _, params = init(cfg)
  prompts, mask = left_padded_batch()
  out = make_sampler(cfg, max_new_tokens=140, stop_ids=(-1,))(params, prompts, mask, jax.random.key(0),
                                                         SamplingParams.make(greedy=True))
  logits, logprobs = rescore(cfg, params, prompts, mask, out)
  assert np.asarray(out.mask).all()
  np.testing.assert_array_equal(np.argmax(logits, -1), np.asarray(out.tokens))
  np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(logprobs), atol=1e-5)


def test_weights_cast_once_give_the_logits_flax_computes():
  """Under bf16 compute flax casts each kernel before its matmul: casting the matrices once
  beforehand (as the sampler does) changes nothing; vectors (norm scales, biases) stay f32."""
  cfg = small_model(dtype="bfloat16")
  _, params = init(cfg)
  cast = in_compute_dtype(params, cfg)
  assert cast["layer_0"]["mlp"]["up"]["kernel"].dtype == jnp.bfloat16
  assert cast["layer_0"]["mlp_norm"]["scale"].dtype == jnp.float32
  prompts, mask = left_padded_batch()
  forward = jax.jit(lambda p: Transformer(cfg).apply({"params": p}, prompts, mask).logits)
  np.testing.assert_array_equal(np.asarray(forward(cast)), np.asarray(forward(params)))


def test_sampled_logprobs_use_the_temperature():
  cfg = small_model()
  _, params = init(cfg)
  prompts, mask = left_padded_batch()
  out = make_sampler(cfg)(params, prompts, mask, jax.random.key(3), SamplingParams.make(temperature=0.7))
  _, logprobs = rescore(cfg, params, prompts, mask, out, temperature=0.7)
  live = np.asarray(out.mask) > 0
  np.testing.assert_allclose(np.asarray(out.logprobs)[live], np.asarray(logprobs)[live], atol=1e-5)


def test_stops_at_eos_and_pads_after():
  cfg = small_model()
  _, params = init(cfg)
  prompts, mask = left_padded_batch()
  key, settings = jax.random.key(4), SamplingParams.make(temperature=1.5)
  free = make_sampler(cfg)(params, prompts, mask, key, settings)
  row = [int(t) for t in free.tokens[0]]
  stop = next(j for j in range(1, 10) if row[j] not in row[:j])  # a token first seen at step j
  out = make_sampler(cfg, stop_ids=(row[stop],))(params, prompts, mask, key, settings)
  np.testing.assert_array_equal(out.tokens[0, :stop + 1], row[:stop + 1])  # same draws up to EOS
  np.testing.assert_array_equal(out.mask[0], [1] * (stop + 1) + [0] * (9 - stop))
  np.testing.assert_array_equal(out.tokens[0, stop + 1:], [PAD] * (9 - stop))
  np.testing.assert_array_equal(out.logprobs[0, stop + 1:], np.zeros(9 - stop))


def test_a_second_stop_id_ends_a_row_as_eos_does_with_the_same_draws_and_log_probs():
  """A chat checkpoint's end of turn (Gemma 3 IT's <end_of_turn>, listed beside its EOS) ends a
  row: kept as its last token (mask 1), pads after; what came before is drawn as without it."""
  cfg = small_model()
  _, params = init(cfg)
  prompts, mask = left_padded_batch()
  key, settings = jax.random.key(4), SamplingParams.make(temperature=1.5)
  free = make_sampler(cfg, stop_ids=(-1,))(params, prompts, mask, key, settings)
  row = [int(t) for t in free.tokens[0]]
  stop = next(j for j in range(1, 10) if row[j] not in row[:j])  # a token first seen at step j
  out = make_sampler(cfg, stop_ids=(-1, row[stop]))(params, prompts, mask, key, settings)
  np.testing.assert_array_equal(out.tokens[0, :stop + 1], row[:stop + 1])
  np.testing.assert_array_equal(out.logprobs[0, :stop + 1], free.logprobs[0, :stop + 1])
  np.testing.assert_array_equal(out.mask[0], [1] * (stop + 1) + [0] * (9 - stop))
  np.testing.assert_array_equal(out.tokens[0, stop + 1:], [PAD] * (9 - stop))


def test_is_stop_is_eos_or_any_stop_id_on_jax_and_numpy_arrays():
  tokens = [1, 106, 5, 1, 107]
  for array in (np.array(tokens), jnp.array(tokens)):
    assert np.asarray(sampling.is_stop(array, (1, 106))).tolist() == [True, True, False, True, False]
    assert np.asarray(sampling.is_stop(array, (1,))).tolist() == [True, False, False, True, False]


def test_stop_at_ends_each_row_after_its_count_with_the_same_draws():
  """A benchmark's replayed lengths (stop_at): row i stops after stop_at[i] tokens, as at an EOS."""
  cfg = small_model()
  _, params = init(cfg)
  prompts, mask = left_padded_batch()
  key, settings = jax.random.key(4), SamplingParams.make(temperature=1.5)
  sampler = make_sampler(cfg, stop_ids=(-1,))  # no token ends a row by itself
  free = sampler(params, prompts, mask, key, settings)
  stop_at = jnp.array([3, 7][:prompts.shape[0]] + [1] * (prompts.shape[0] - 2), jnp.int32)
  out = sampler(params, prompts, mask, key, settings, stop_at=stop_at)
  np.testing.assert_array_equal(out.mask.sum(axis=1), stop_at)
  for i, n in enumerate(np.asarray(stop_at)):
    np.testing.assert_array_equal(out.tokens[i, :n], free.tokens[i, :n])
    assert (np.asarray(out.tokens[i, n:]) == PAD).all()


def test_checking_for_done_rows_less_often_changes_no_output(monkeypatch):
  cfg = small_model()
  _, params = init(cfg)
  prompts, mask = (jnp.repeat(x[:1], 4, axis=0) for x in left_padded_batch())  # identical greedy rows
  key, settings = jax.random.key(4), SamplingParams.make(greedy=True)
  eos = int(make_sampler(cfg)(params, prompts, mask, key, settings).tokens[0, 2])  # every row stops early
  outputs = []
  for every in (1, 3, 8):
    monkeypatch.setattr(sampling, "DONE_CHECK_EVERY", every)
    outputs.append(make_sampler(cfg, stop_ids=(eos,))(params, prompts, mask, key, settings))
  assert (outputs[0].mask.sum(axis=1) <= 3).all()  # all done by step 3: the loop may stop there
  for out in outputs[1:]:
    chex.assert_trees_all_equal(out, outputs[0])


def test_top_k_one_and_tiny_top_p_are_greedy():
  cfg = small_model()
  _, params = init(cfg)
  prompts, mask = left_padded_batch()
  sampler = make_sampler(cfg)
  greedy = sampler(params, prompts, mask, jax.random.key(0), SamplingParams.make(greedy=True))
  top_k = sampler(params, prompts, mask, jax.random.key(5), SamplingParams.make(temperature=2.0, top_k=1))
  top_p = sampler(params, prompts, mask, jax.random.key(6), SamplingParams.make(temperature=2.0, top_p=1e-6))
  np.testing.assert_array_equal(top_k.tokens, greedy.tokens)
  np.testing.assert_array_equal(top_p.tokens, greedy.tokens)


def test_filter_logits_hand_cases():
  logits = jnp.log(jnp.array([[0.5, 0.05, 0.3, 0.15]]))
  kept = lambda k, p: np.isfinite(np.asarray(filter_logits(logits, jnp.int32(k), jnp.float32(p))))[0]
  np.testing.assert_array_equal(kept(0, 1.0), [1, 1, 1, 1])
  np.testing.assert_array_equal(kept(2, 1.0), [1, 0, 1, 0])
  np.testing.assert_array_equal(kept(0, 0.7), [1, 0, 1, 0])  # 0.5 alone < 0.7, 0.5 + 0.3 covers it
  np.testing.assert_array_equal(kept(0, 0.5), [1, 0, 0, 0])
  # The nucleus is taken over the renormalised top-k: 0.5/0.95 + 0.3/0.95 = 0.84 >= 0.83.
  np.testing.assert_array_equal(kept(0, 0.83), [1, 0, 1, 1])
  np.testing.assert_array_equal(kept(3, 0.83), [1, 0, 1, 0])


def test_tokens_are_jax_random_categoricals_draw():
  # choose_tokens takes categorical's own Gumbel noise with its own argmax (first_argmax):
  # the same tokens, ties and -inf (top-k filtered) logits included.
  logits = jax.random.normal(jax.random.key(0), (64, 50)).at[:, :20].set(-jnp.inf).at[:, 30].set(9.0).at[:, 40].set(9.0)
  for seed in range(5):
    key = jax.random.key(seed)
    tokens, _ = sampling.choose_tokens(logits, key, SamplingParams.make(temperature=1.0))
    np.testing.assert_array_equal(tokens, jax.random.categorical(key, logits, axis=-1))
  greedy, _ = sampling.choose_tokens(logits, key, SamplingParams.make(greedy=True))
  np.testing.assert_array_equal(greedy, np.full(64, 30))  # the first of the tied maxima, as jnp.argmax
  np.testing.assert_array_equal(first_argmax(logits), jnp.argmax(logits, axis=-1))


def test_changing_sampling_settings_does_not_recompile():
  cfg = small_model()
  _, params = init(cfg)
  prompts, mask = left_padded_batch()
  model = Transformer(cfg)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def sampler(params, prompts, mask, rng, settings):
    return sample(model, params, prompts, mask, rng, settings, max_new_tokens=6, stop_ids=(EOS,), pad_id=PAD)

  for settings in [dict(greedy=True), dict(temperature=0.5, top_k=3), dict(temperature=1.3, top_p=0.8)]:
    sampler(params, prompts, mask, jax.random.key(1), SamplingParams.make(**settings)).tokens.block_until_ready()
