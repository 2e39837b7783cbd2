"""The Transformer: cached decoding, padding, logical axes, heads, both block styles."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models.transformer import KVCache, Transformer, last_token_index, positions_from_mask
from tests.conftest import GEMMA3, LLAMA, small_model

STYLES = {"gpt2": {}, "llama_gqa": LLAMA, "gemma3": GEMMA3}


def init(cfg, seed=0):
  boxed = Transformer(cfg).init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"]
  return boxed, nn.meta.unbox(boxed)


def left_padded_batch(seed=1, batch=3, length=12, vocab=256):
  tokens = jax.random.randint(jax.random.key(seed), (batch, length), 0, vocab)
  pads = np.array([0, 3, 7])[:batch]
  mask = np.arange(length)[None, :] >= pads[:, None]
  return tokens, jnp.asarray(mask)


@pytest.mark.parametrize("style", STYLES)
def test_cached_decoding_matches_full_forward(style):
  cfg = small_model(**STYLES[style])
  _, params = init(cfg)
  model = Transformer(cfg)
  tokens, mask = left_padded_batch()
  full = model.apply({"params": params}, tokens, mask).logits
  out = model.apply({"params": params}, tokens[:, :8], mask[:, :8], cache=KVCache.empty(cfg, 3, 16))
  pieces, cache = [out.logits], out.cache
  for t in range(8, 12):  # one token at a time, as the sampler does
    out = model.apply({"params": params}, tokens[:, t:t + 1], mask[:, t:t + 1], cache=cache)
    pieces.append(out.logits)
    cache = out.cache
  cached = jnp.concatenate(pieces, axis=1)
  real = np.asarray(mask)[..., None]
  np.testing.assert_allclose(np.where(real, cached, 0), np.where(real, full, 0), atol=1e-5, rtol=1e-5)
  assert int(cache.index) == 12


@pytest.mark.parametrize("style", STYLES)
def test_left_padding_does_not_change_logits(style):
  cfg = small_model(**STYLES[style])
  _, params = init(cfg)
  model = Transformer(cfg)
  tokens, mask = left_padded_batch()
  padded = model.apply({"params": params}, tokens, mask).logits
  for row, pad in enumerate([0, 3, 7]):
    alone = model.apply({"params": params}, tokens[row:row + 1, pad:]).logits
    np.testing.assert_allclose(padded[row, pad:], alone[0], atol=1e-5, rtol=1e-5)
  assert bool(jnp.isfinite(padded).all())  # fully masked pad rows must not produce NaN


def test_positions_count_real_tokens_only():
  mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(positions_from_mask(mask), [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]])


@pytest.mark.parametrize("style", STYLES)
def test_every_parameter_names_its_logical_axes(style):
  cfg = small_model(**STYLES[style], heads=("value",))
  boxed, params = init(cfg)
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert all(isinstance(x, nn.Partitioned) for x in leaves)
  assert all(len(x.names) == x.value.ndim for x in leaves)
  assert sum(p.size for p in jax.tree.leaves(params)) == cfg.num_params()


def test_block_styles_have_their_parameters():
  _, gpt2 = init(small_model())
  _, llama = init(small_model(**LLAMA))
  assert "pos_embed" in gpt2 and "lm_head" not in gpt2 and "bias" in gpt2["layer_0"]["attn"]["query"]
  assert "pos_embed" not in llama and "lm_head" in llama and "gate" in llama["layer_0"]["mlp"]
  assert llama["layer_0"]["attn"]["key"]["kernel"].shape == (64, 2, 16)  # 2 kv heads of 4
  assert "bias" not in llama["layer_0"]["attn"]["query"]


def test_scalar_heads_and_logits_off():
  cfg = small_model(heads=("reward", "value"))
  _, params = init(cfg)
  tokens, mask = left_padded_batch()
  out = Transformer(cfg).apply({"params": params}, tokens, mask, with_logits=False)
  assert out.logits is None
  assert out.scalars["reward"].shape == (3, 12) and out.scalars["value"].shape == (3, 12)
  std = float(np.std(params["reward_head"]["kernel"]))
  assert abs(std - 1 / np.sqrt(65)) < 0.05  # N(0, 1/sqrt(d+1)) init


def test_remat_and_bfloat16():
  cfg = small_model()
  _, params = init(cfg)
  tokens, mask = left_padded_batch()
  base = Transformer(cfg).apply({"params": params}, tokens, mask).logits
  remat = Transformer(small_model(remat=True)).apply({"params": params}, tokens, mask).logits
  np.testing.assert_allclose(remat, base, atol=1e-6)
  bf16 = Transformer(small_model(dtype="bfloat16")).apply({"params": params}, tokens, mask).logits
  assert bf16.dtype == jnp.float32  # logits come out in f32 for the loss
  # Measured 0.0039 here (0.0036-0.0048 over 4 inits x 3 batches, logits up to ~1.4): about
  # bfloat16's rounding (2^-8 relative). A difference of 0 would mean bf16 was never used.
  assert 1e-4 < float(jnp.abs(bf16 - base).max()) < 0.01


def test_last_token_index_finds_each_rows_last_real_token_whatever_the_padding():
  mask = jnp.array([[1, 1, 1, 1, 1, 1],   # no padding: the last position
                    [0, 0, 1, 1, 1, 1],   # left padding: still the last position
                    [1, 1, 1, 0, 0, 0],   # right padding: position 2
                    [0, 1, 1, 1, 0, 0]])  # both sides: position 3
  np.testing.assert_array_equal(last_token_index(mask), [5, 5, 2, 3])


def test_bad_model_config_is_rejected():
  with pytest.raises(ValueError, match="n_kv_heads"):
    small_model(n_kv_heads=3)
  with pytest.raises(ValueError, match="position"):
    small_model(position="alibi")


@pytest.mark.parametrize("style", [*STYLES, "gpt2_rope"])
def test_a_packed_row_gives_each_sequence_the_logits_it_has_alone(style):
  cfg = small_model(**STYLES.get(style, {"position": "rope"}))
  _, params = init(cfg)
  model = Transformer(cfg)
  a, b = (jax.random.randint(jax.random.key(s), (1, n), 0, 256) for s, n in ((2, 5), (3, 7)))
  row = jnp.concatenate([a, b, jnp.zeros((1, 2), a.dtype)], axis=1)  # a, b, then 2 pads
  segments = jnp.array([[1] * 5 + [2] * 7 + [0] * 2])
  packed = model.apply({"params": params}, row, segments > 0, segments=segments).logits
  for alone, where in ((a, slice(0, 5)), (b, slice(5, 12))):
    np.testing.assert_allclose(packed[:, where], model.apply({"params": params}, alone).logits, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("style", [*STYLES, "gpt2_rope", "lora"])
def test_query_index_gives_those_tokens_outputs_and_gradients(style):
  """The last block on a few tokens (a reward model's scoring token) is exact, packed rows too."""
  extra = {"lora": {"lora_rank": 4, "lora_targets": ("query", "key", "value", "out", "up", "down")},
           "gpt2_rope": {"position": "rope"}}.get(style, STYLES.get(style, {}))
  cfg = small_model(heads=("reward",), **extra)
  _, params = init(cfg)
  model = Transformer(cfg)
  tokens, mask = left_padded_batch()
  index = jnp.array([[11, 4], [11, 9], [11, 10]])
  segments = jnp.where(jnp.arange(12) < 6, 1, 2) * mask

  def scores(p, query_index, segs):
    out = model.apply({"params": p}, tokens, mask, segments=segs, query_index=query_index)
    values = out.scalars["reward"]
    return values if query_index is not None else jnp.take_along_axis(values, index, axis=1), out.logits

  for segs in (None, segments):
    (few, few_logits), (full, full_logits) = scores(params, index, segs), scores(params, None, segs)
    np.testing.assert_allclose(few, full, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(few_logits, jnp.take_along_axis(full_logits, index[..., None], axis=1), atol=1e-5,
                               rtol=1e-5)
    grads = [jax.grad(lambda p: jnp.sum(scores(p, i, segs)[0] ** 2))(params) for i in (index, None)]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), *grads)
