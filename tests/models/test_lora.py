"""LoRA adapters: B = 0 is the base exactly, merged equals unmerged, the base (adapters off) is
the plain model, and adapters are laid out by the logical axes of the kernels they adapt."""

import dataclasses

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from rlhf_jax.models import lora
from rlhf_jax.models.transformer import Transformer, boxed_params
from tests.conftest import LLAMA, small_model

FAMILIES = {"gpt2": {}, "llama_gqa": dict(LLAMA, max_len=64)}


def init(cfg, seed=0):
  return nn.meta.unbox(boxed_params(Transformer(cfg), jax.random.key(seed)))


def tokens():
  return jax.random.randint(jax.random.key(1), (2, 11), 0, 259)


def with_random_b(params, seed=3):
  """The adapters trained away from B = 0 (as after some updates)."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  keys = iter(jax.random.split(jax.random.key(seed), len(leaves)))
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.05 * jax.random.normal(next(keys), x.shape) if path[-1].key == "lora_b" else x, params)


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_b_gives_the_base_logits_exactly_and_the_base_is_the_plain_model(family):
  plain = small_model(heads=("value",), **FAMILIES[family])
  adapted = dataclasses.replace(plain, lora_rank=4)
  base_params, lora_params = init(plain), init(adapted)
  trainable, base = lora.split(lora_params)
  # The adapted model's init is the plain one's plus adapters (and its B starts at zero).
  np.testing.assert_equal(jax.device_get(base), jax.device_get({k: v for k, v in base_params.items()
                                                               if k != "value_head"}))
  assert all(not np.any(x) for p, x in jax.tree_util.tree_leaves_with_path(trainable) if p[-1].key == "lora_b")
  ours = Transformer(adapted).apply({"params": lora_params}, tokens())
  theirs = Transformer(plain).apply({"params": base_params}, tokens())
  np.testing.assert_array_equal(ours.logits, theirs.logits)
  np.testing.assert_array_equal(ours.scalars["value"], theirs.scalars["value"])
  # Adapters off: the adapted model on its base alone is the base model (no heads are computed).
  off = Transformer(adapted).apply({"params": base}, tokens())
  np.testing.assert_array_equal(off.logits, theirs.logits)
  assert off.scalars == {}


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_adapters_equal_the_adapted_model_to_float_error(family):
  adapted = small_model(lora_rank=4, lora_alpha=8.0, **FAMILIES[family])
  params = with_random_b(init(adapted))
  ours = Transformer(adapted).apply({"params": params}, tokens()).logits
  merged = lora.merge(params, adapted)
  assert not lora.has_adapters(merged)
  theirs = Transformer(dataclasses.replace(adapted, lora_rank=0)).apply({"params": merged}, tokens()).logits
  base = Transformer(adapted).apply({"params": lora.split(params)[1]}, tokens()).logits
  assert float(jnp.max(jnp.abs(ours - base))) > 0.1  # the adapters do change the model
  np.testing.assert_allclose(ours, theirs, atol=2e-5)


def test_targets_choose_the_adapted_projections_and_the_count_is_exact():
  cfg = small_model(lora_rank=8, lora_targets=("query", "value", "down"), **LLAMA)
  trainable, _ = lora.split(init(cfg))
  adapted = {path[1:-1] for path in flax.traverse_util.flatten_dict(trainable)}
  assert adapted == {("attn", "query"), ("attn", "value"), ("mlp", "down")}
  assert sum(x.size for x in jax.tree.leaves(trainable)) == lora.num_params(cfg)
  full = small_model(lora_rank=8, **LLAMA)
  assert sum(x.size for x in jax.tree.leaves(lora.split(init(full))[0])) == lora.num_params(full)
  with pytest.raises(ValueError, match="lora.targets"):
    small_model(lora_rank=8, lora_targets=("qkv",))


def test_adapters_are_sharded_as_the_kernels_they_adapt():
  """A gets the kernel's input axes, B its output axes, the rank axis is never split."""
  cfg = small_model(lora_rank=4, **LLAMA)
  specs = flax.traverse_util.flatten_dict(nn.get_partition_spec(boxed_params(Transformer(cfg), jax.random.key(0))))
  rules = dict(common.DEFAULT_RULES)
  mesh_axes = lambda key: tuple(nn.logical_to_mesh_axes(specs[key], tuple(rules.items())))
  for module, n_in in (("query", 1), ("key", 1), ("out", 2)):
    kernel = mesh_axes(("layer_0", "attn", module, "kernel"))
    assert mesh_axes(("layer_0", "attn", module, "lora_a")) == (*kernel[:n_in], None)
    assert mesh_axes(("layer_0", "attn", module, "lora_b")) == (None, *kernel[n_in:])
  for module in ("gate", "up", "down"):
    kernel = mesh_axes(("layer_0", "mlp", module, "kernel"))
    assert mesh_axes(("layer_0", "mlp", module, "lora_a")) == (kernel[0], None)
    assert mesh_axes(("layer_0", "mlp", module, "lora_b")) == (None, kernel[1])


def test_split_and_combine_round_trip():
  params = init(small_model(lora_rank=2, heads=("reward",)))
  trainable, base = lora.split(params)
  assert set(trainable) == {"reward_head"} | {k for k in params if k.startswith("layer_")}
  assert "reward_head" not in base and "embed" in base
  jax.tree.map(np.testing.assert_array_equal, lora.combine(base, trainable), params)
  assert lora.combine(None, trainable) is trainable
