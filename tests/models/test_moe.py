"""Mixture of experts: the sorted ragged_dot path against every expert on every token, the
load-balancing loss against Hugging Face's, router replay, and the parameter counts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models import moe
from rlhf_jax.models.config import ModelConfig
from rlhf_jax.models.transformer import Transformer
from tests.conftest import LLAMA, small_model

MOE = dict(LLAMA, n_experts=8, experts_per_token=2, d_expert=32)


def init(cfg):
  return nn.meta.unbox(Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])


def tokens_and_mask():
  tokens = jax.random.randint(jax.random.key(1), (3, 12), 0, 259)
  return tokens, jnp.arange(12)[None, :] >= jnp.array([0, 3, 7])[:, None]  # left-padded rows


def every_expert(x, gates, experts, p):
  """The reference: each expert on every token, weighted by its gate (0 where not chosen)."""
  weights = jnp.sum(jax.nn.one_hot(experts, p["gate"].shape[0]) * gates[..., None], axis=-2)  # [b, t, E]
  hidden = nn.silu(jnp.einsum("btd,edf->btef", x, p["gate"])) * jnp.einsum("btd,edf->btef", x, p["up"])
  return jnp.einsum("btef,efd,bte->btd", hidden, p["down"], weights)


@pytest.mark.parametrize("renormalise", [True, False])
def test_sorted_ragged_dot_equals_every_expert_on_every_token(renormalise):
  cfg = small_model(**MOE, norm_topk_prob=renormalise)
  layer = moe.MoeMlp(cfg)
  x = jax.random.normal(jax.random.key(2), (3, 12, cfg.d_model))
  params = nn.meta.unbox(layer.init(jax.random.key(3), x)["params"])
  params = jax.tree.map(lambda w: w * 20, params)  # routers far from uniform
  y, routing = layer.apply({"params": params}, x)
  gates, experts = moe.route(routing.logits, 2, renormalise)
  np.testing.assert_array_equal(experts, routing.experts)
  assert len(np.unique(experts)) == cfg.n_experts  # every group of the ragged_dot is used
  np.testing.assert_allclose(y, every_expert(x, gates, experts, params), atol=1e-5)
  assert np.allclose(jnp.sum(gates, -1), 1.0, atol=1e-6) == renormalise


def test_each_devices_share_of_the_experts_sums_to_every_expert():
  """Expert parallelism's split (moe.expert_parallel): experts first .. first + 1 of 8 on each of
  4 devices, the other devices' pairs 0; the 4 shares sum to all 8 experts at once."""
  cfg = small_model(**MOE)
  x = jax.random.normal(jax.random.key(2), (36, cfg.d_model))
  experts = jax.random.randint(jax.random.key(3), (36, 2), 0, 8)
  gates = jax.random.uniform(jax.random.key(4), (36, 2))
  gate, up, down = (0.1 * jax.random.normal(jax.random.key(i), s) for i, s in
                    enumerate([(8, cfg.d_model, 32), (8, cfg.d_model, 32), (8, 32, cfg.d_model)]))
  whole = moe.mixed_experts(x, experts, gates, gate, up, down)
  shares = [moe.mixed_experts(x, experts, gates, gate[i:i + 2], up[i:i + 2], down[i:i + 2], first=i)
            for i in range(0, 8, 2)]
  assert all(float(jnp.max(jnp.abs(share))) > 0 for share in shares)  # every device has pairs of its own
  np.testing.assert_allclose(sum(shares), whole, atol=1e-5)


def test_load_balancing_loss_equals_hugging_face_with_and_without_a_mask():
  import torch  # pylint: disable=g-import-not-at-top
  from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func
  cfg = small_model(**MOE)
  tokens, mask = tokens_and_mask()
  out = Transformer(cfg).apply({"params": init(cfg)}, tokens, mask)
  per_layer = tuple(torch.tensor(np.asarray(r.logits).reshape(-1, cfg.n_experts)) for r in out.router)
  for given in (None, mask):
    torch_mask = None if given is None else torch.tensor(np.asarray(given))
    theirs = load_balancing_loss_func(per_layer, cfg.n_experts, 2, torch_mask)
    assert abs(float(moe.load_balancing_loss(out.router, given)) - float(theirs)) < 1e-6


def test_replayed_experts_give_the_same_outputs_and_gates_stay_live():
  cfg = small_model(**MOE)
  params, model = init(cfg), Transformer(cfg)
  tokens, mask = tokens_and_mask()
  out = model.apply({"params": params}, tokens, mask)
  recorded = jnp.stack([r.experts for r in out.router])  # [layers, batch, time, k]
  replayed = model.apply({"params": params}, tokens, mask, routed=recorded)
  np.testing.assert_array_equal(replayed.logits, out.logits)
  # Other experts: other outputs, with gates read from the live router's probabilities.
  other = model.apply({"params": params}, tokens, mask, routed=(recorded + 1) % cfg.n_experts)
  assert np.abs(other.logits - out.logits).max() > 1e-3
  logits = out.router[0].logits
  gates, _ = moe.route(logits, 2, True, (recorded[0] + 1) % cfg.n_experts)
  probs = jax.nn.softmax(logits)
  chosen = jnp.take_along_axis(probs, (recorded[0] + 1) % cfg.n_experts, -1)
  np.testing.assert_allclose(gates, chosen / chosen.sum(-1, keepdims=True), rtol=1e-6)


def test_remat_and_dense_models_are_unchanged():
  cfg = small_model(**MOE)
  params = init(cfg)
  tokens, mask = tokens_and_mask()
  loss = lambda c: lambda p: jnp.sum(Transformer(c).apply({"params": p}, tokens, mask).logits ** 2)
  plain, remat = (jax.grad(loss(c))(params) for c in (cfg, small_model(**MOE, remat=True)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), plain, remat)
  assert float(jnp.abs(plain["layer_0"]["mlp"]["router"]).sum()) > 0  # the gates carry the router's gradient
  dense = small_model(**LLAMA)
  assert Transformer(dense).apply({"params": init(dense)}, tokens, mask).router is None


def test_parameter_counts_total_and_active():
  cfg = small_model(**MOE)
  assert cfg.num_params() == sum(x.size for x in jax.tree.leaves(init(cfg)))
  # Per layer 8 experts of 3 * 64 * 32 weights and a 64 x 8 router; a token uses 2 experts.
  assert cfg.num_params() - cfg.active_params() == 2 * 6 * 3 * 64 * 32
  # Qwen3-30B-A3B's shape: its model card says 30.5B in all, 3.3B activated.
  qwen = ModelConfig(vocab_size=151936, d_model=2048, n_layers=48, n_heads=32, n_kv_heads=4, head_dim=128,
                     d_ff=6144, d_expert=768, n_experts=128, experts_per_token=8, qk_norm=True,
                     **{k: v for k, v in LLAMA.items() if k != "n_kv_heads"})
  assert 30.5e9 <= qwen.num_params() < 30.6e9 and 3.3e9 <= qwen.active_params() < 3.4e9


@pytest.mark.parametrize("change, message", [
    (dict(experts_per_token=9), "experts_per_token=9 must be in 1..n_experts=8"),
    (dict(mlp="gelu"), "experts are SwiGLU without biases"),
    (dict(bias="all"), "experts are SwiGLU without biases"),
    (dict(lora_rank=4), "experts take no LoRA adapters"),
])
def test_bad_moe_configs_are_one_line_errors(change, message):
  with pytest.raises(ValueError, match=message) as caught:
    small_model(**{**MOE, **change})
  assert "\n" not in str(caught.value)


def test_flops_count_active_experts_and_the_memory_plan_every_expert():
  from configs import common, pretrain  # pylint: disable=g-import-not-at-top
  from rlhf_jax import flops, memory  # pylint: disable=g-import-not-at-top
  cfg = small_model(**MOE)
  # Per layer: q and out 2 x 64 x 64, k and v 2 x 64 x 32, the router 64 x 8 and 2 of the 8
  # experts (3 x 64 x 32 each); then the LM head 64 x 259.
  layer = 2 * 64 * 64 + 2 * 64 * 32 + 64 * 8 + 2 * 3 * 64 * 32
  assert flops.matmul_weights(cfg) == 2 * layer + 64 * 259
  plan = memory.plan(pretrain.get_config("tiny"), cfg, {"data": 1, "fsdp": 1, "tensor": 1})
  assert plan["params"] == cfg.num_params() * 4 and "active" in plan.table()
  # fsdp=4 splits the experts (and the router's expert axis) 4 ways: expert parallelism.
  mlp = memory.abstract_params(cfg)["layer_0"]["mlp"]
  assert memory.tree_bytes(mlp, common.DEFAULT_RULES, {"data": 1, "fsdp": 4, "tensor": 1}) == (
      (3 * 8 * 64 * 32 + 64 * 8) // 4 * 4)
