"""A LoRA policy's adapters in PEFT's layout for vLLM (interop/vllm_lora.py): what they add to each
exported weight is exactly what merging them into the kernels adds; projections vLLM's adapters
cannot sit on are refused in one line."""

import flax
import jax
import numpy as np
import pytest

from rlhf_jax.errors import UserError
from rlhf_jax.interop import vllm_engine, vllm_lora
from rlhf_jax.models import lora
from rlhf_jax.models.transformer import Transformer
from tests.conftest import GPT2, LLAMA, small_model


def adapted_params(**architecture):
  """A small model's params with rank-4 adapters on every target, B non-zero (as after training)."""
  cfg = small_model(**architecture, lora_rank=4, lora_alpha=8.0)
  params = flax.linen.meta.unbox(Transformer(cfg).init(jax.random.PRNGKey(0), np.ones((1, 8), np.int32))["params"])
  flat = flax.traverse_util.flatten_dict(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(flat))
  flat = {path: x + 0.1 * jax.random.normal(key, x.shape) if path[-1] == "lora_b" else x
          for key, (path, x) in zip(keys, flat.items())}
  return cfg, flax.traverse_util.unflatten_dict(flat)


def test_the_peft_adapters_add_to_each_exported_weight_what_merging_adds():
  cfg, params = adapted_params(**LLAMA)
  tensors = vllm_lora.adapter_tensors(params, cfg)
  merged = dict(vllm_engine.hf_tensors(lora.merge(params, cfg), cfg))
  base = dict(vllm_engine.hf_tensors(vllm_lora.base_params(params), cfg))
  modules = {name.removeprefix("base_model.model.").removesuffix(".lora_A.weight") for name in tensors
             if name.endswith("lora_A.weight")}
  assert len(modules) == 7 * cfg.n_layers  # q, k, v, o, gate, up, down in every layer
  for module in modules:
    a, b = (tensors[f"base_model.model.{module}.lora_{x}.weight"] for x in "AB")
    assert a.shape[0] == b.shape[1] == 4
    delta = np.asarray(merged[f"{module}.weight"]) - np.asarray(base[f"{module}.weight"])
    np.testing.assert_allclose(delta, lora.scale(cfg) * b @ a, atol=1e-5)


def test_fused_or_interleaved_projections_are_refused_in_one_line():
  cfg, params = adapted_params(**GPT2)  # GPT-2's c_attn holds q, k and v in one Conv1D
  with pytest.raises(UserError, match="no plain linear layer in a gpt2 checkpoint") as error:
    vllm_lora.adapter_tensors(params, cfg)
  assert "\n" not in str(error.value)


def test_adapter_ranks_map_to_the_sizes_vllm_takes():
  assert vllm_engine.adapter_slots(0) == {}
  assert vllm_engine.adapter_slots(4)["max_lora_rank"] == 8 and vllm_engine.adapter_slots(24)["max_lora_rank"] == 32
  with pytest.raises(UserError, match="rank <= 512"):
    vllm_engine.adapter_slots(1024)
