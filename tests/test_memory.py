"""The memory planner: exact shard sizes of params and optimizer state on any mesh, the models
each stage holds, the KV cache and activation terms, the check before compiling, and the CLI."""

import os
import subprocess
import sys

import jax
import pytest

from configs import dpo, ppo, pretrain
from rlhf_jax import memory, sharding
from rlhf_jax.errors import UserError
from tests.conftest import small_model, xla_flags
from tests.test_main import ROOT
from tests.test_sharding import mesh_cfg

# small_model(): vocab 259, d_model 64, 2 layers, 4 heads of 16, d_ff 128, 64 learned positions,
# GPT-2 block (biases everywhere, tied embeddings).
SMALL_PARAMS = 87744


def mesh(data=1, fsdp=1, tensor=1) -> dict:
  return {"data": data, "fsdp": fsdp, "tensor": tensor}


def test_one_device_holds_every_param_in_float32():
  assert small_model().num_params() == SMALL_PARAMS
  plan = memory.plan(pretrain.get_config("tiny"), small_model(), mesh())
  assert plan["params"] == SMALL_PARAMS * 4


def test_pure_data_parallel_replicates_the_state():
  cfg = pretrain.get_config("tiny")
  one, eight = memory.plan(cfg, small_model(), mesh()), memory.plan(cfg, small_model(), mesh(data=8))
  assert eight["params"] == one["params"] and eight["optimizer state"] == one["optimizer state"]


def test_fsdp_splits_the_embed_dimension_of_every_param():
  # Per-device elements with embed (64) split 8 ways: embedding 259 x 8 + positions 64 x 8 + final
  # norm 2 x 8, and per layer: 2 norms 4 x 8, q/k/v kernels 3 x 8 x 4 x 16 and biases 3 x 4 x 16
  # (no embed axis: whole), out 4 x 16 x 8 + 8, up 8 x 128 + 128 (bias whole), down 128 x 8 + 8.
  layer = 32 + 1536 + 192 + 520 + 1152 + 1032
  expected = 2072 + 512 + 16 + 2 * layer
  assert memory.plan(pretrain.get_config("tiny"), small_model(), mesh(fsdp=8))["params"] == expected * 4


def test_tensor_parallel_splits_vocab_heads_and_mlp():
  # tensor=4 (a vocabulary JAX can split evenly): vocab 256 -> 64 rows, 4 heads -> 1, d_ff 128 -> 32;
  # embed whole. Per layer: norms 4 x 64, q/k/v 3 x (64 x 1 x 16 + 1 x 16), out 1 x 16 x 64 + 64,
  # up 64 x 32 + 32, down 32 x 64 + 64.
  layer = 256 + 3 * (1024 + 16) + 1088 + 2080 + 2112
  expected = 64 * 64 + 64 * 64 + 128 + 2 * layer
  plan = memory.plan(pretrain.get_config("tiny"), small_model(vocab_size=256), mesh(data=2, tensor=4))
  assert plan["params"] == expected * 4


def test_adamw_state_is_two_moments_and_two_counters():
  cfg = pretrain.get_config("tiny")
  for shape in (mesh(), mesh(fsdp=8), mesh(fsdp=2, tensor=4)):
    plan = memory.plan(cfg, small_model(), shape)
    assert plan["optimizer state"] == 2 * plan["params"] + 8  # adam's and the schedule's int32 counts
    assert plan["gradients"] == plan["params"]


def test_stages_hold_the_trainers_models():
  n, head = SMALL_PARAMS * 4, (64 + 1) * 4  # a scalar head: d_model weights + a bias
  ppo_plan = memory.plan(ppo.get_config("tiny"), small_model(), mesh())
  assert ppo_plan["params"] == 2 * n + head  # the policy and a critic with a value head
  assert ppo_plan["frozen models"] == 2 * n + head  # the reference and a reward model
  assert "policy + critic" in ppo_plan.table() and "reference + reward model" in ppo_plan.table()
  dpo_plan = memory.plan(dpo.get_config("tiny"), small_model(), mesh())
  assert dpo_plan["params"] == n and dpo_plan["frozen models"] == 2 * n + head
  pretrain_plan = memory.plan(pretrain.get_config("tiny"), small_model(), mesh())
  assert pretrain_plan["frozen models"] == 0 and pretrain_plan["total"] == sum(r.bytes for r in pretrain_plan.rows)


def test_critic_free_rl_and_vmapped_seeds():
  cfg = ppo.get_config("tiny")
  cfg.algo = "rloo"
  assert memory.plan(cfg, small_model(), mesh())["params"] == SMALL_PARAMS * 4
  cfg.vmap_seeds = 3
  plan = memory.plan(cfg, small_model(), mesh())
  assert plan["params"] == 3 * SMALL_PARAMS * 4 and plan["frozen models"] == (2 * SMALL_PARAMS + 65) * 4


def test_function_rewards_hold_no_reward_model_and_oversampling_fills_more_cache():
  cfg = ppo.get_config("tiny")
  cfg.reward.fns = ("exact_match",)
  plan = memory.plan(cfg, small_model(), mesh())
  assert plan["frozen models"] == SMALL_PARAMS * 4 and "reward model" not in plan.table()  # the reference alone
  cfg.algo, cfg.rl.oversample = "dapo", 4  # 4 extra prompts x k = 4: 16 more rows sampled
  assert memory.plan(cfg, small_model(), mesh())["KV cache"] == plan["KV cache"] * (64 + 16) // 64


def test_kv_cache_of_the_rollout():
  # PPO tiny: 64 responses of 16 prompt + 80 new tokens; 2 layers x (k, v) x 4 heads x 16 x f32.
  cfg = ppo.get_config("tiny")
  whole = 64 * 2 * 2 * 96 * 4 * 16 * 4
  assert memory.plan(cfg, small_model(), mesh())["KV cache"] == whole
  assert memory.plan(cfg, small_model(), mesh(data=8))["KV cache"] == whole // 8
  assert memory.plan(cfg, small_model(), mesh(data=2, tensor=4))["KV cache"] == whole // 8
  cfg.sample.batching = "continuous"  # the cache is the slots': a quarter of the rows by default
  assert memory.plan(cfg, small_model(), mesh())["KV cache"] == whole // 4
  cfg.sample.slots = 32
  assert "32 slots x 96 tokens" in memory.plan(cfg, small_model(), mesh()).table()
  # Paged: a pool of 6 x 16-token tables per 32 slots, halved by default (96 blocks), and its scratch block.
  cfg.sample.batching = "paged"
  plan = memory.plan(cfg, small_model(), mesh())
  assert plan["KV cache"] == whole // 64 * 97 * 16 // 96 and "96 blocks x 16 tokens, paged, 32 slots" in plan.table()


def test_activations_follow_korthikanti_et_al():
  # pretrain tiny: 16 rows of 128 tokens; s*b*h*(34 + 5*a*s/h) per layer at 16 bits, x2 for f32,
  # plus f32 logits and their gradient.
  cfg = pretrain.get_config("tiny")
  s, b, h, a, v = 128, 16, 64, 4, 259
  layer = s * b * h * (34 + 5 * a * s / h)
  logits = 2 * b * s * v * 4
  assert memory.plan(cfg, small_model(), mesh())["activations"] == int(2 * layer * 2 + logits)
  remat = memory.plan(cfg, small_model(remat=True), mesh())["activations"]
  assert remat == int((2 * 2 * s * b * h + layer) * 2 + logits)
  assert memory.plan(cfg, small_model(), mesh(data=8))["activations"] == int((2 * layer * 2 + logits) / 8)
  chunked = memory.plan(cfg, small_model(logits_chunk=32), mesh())
  assert chunked["activations"] == int(2 * layer * 2 + logits / 4)  # 32 of the 128 positions' logits at a time
  assert "logits 32 positions at a time" in chunked.rows[-1].parts


def test_check_stops_a_run_that_does_not_fit():
  cfg = ppo.get_config("tiny")
  one_device = sharding.make_mesh(mesh_cfg(), jax.devices()[:1])
  cfg.memory.device_gb = 0.001
  with pytest.raises(UserError, match=r"needs \d.* MiB per device but the device has 1.02 MiB: shard more"):
    memory.check(cfg, small_model(), one_device)
  cfg.memory.device_gb = 100.0
  assert memory.device_bytes(cfg) == 100 * 2**30
  assert memory.check(cfg, small_model(), one_device).total < 100 * 2**30


def test_a_mesh_that_does_not_split_a_parameter_is_named_before_anything_is_placed():
  rules = pretrain.get_config("tiny").sharding_rules
  memory.check_divisible(small_model(vocab_size=264), rules, mesh(data=2, tensor=4))  # 4 heads over 4: fine
  with pytest.raises(UserError, match=r"parameter layer_0/attn/.* its size 4 does not split over mesh axes tensor"):
    memory.check_divisible(small_model(vocab_size=264), rules, mesh(tensor=8))


def test_cli_prints_the_plan_of_an_eight_device_mesh():
  result = subprocess.run([sys.executable, "-m", "rlhf_jax.memory", "--config=configs/ppo.py:gpt2_small",
                           "--devices=8", "--config.mesh.fsdp=8", "--config.mesh.data=1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert "memory plan of stage rl on mesh data=1 fsdp=8 tensor=1" in out
  for row in ("params", "optimizer state", "gradients", "frozen models", "KV cache", "activations", "total"):
    assert f"\n  {row} " in out
  assert "policy + critic" in out and "reference + reward model" in out


SHARDED_STATE = """
import jax
from configs import pretrain
from rlhf_jax import memory, sharding
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.core import setup
from rlhf_jax.training.core.optim import make_optimizer
from tests.conftest import small_model
cfg = pretrain.get_config("tiny")
cfg.mesh.update(dict(data=1, fsdp=2, tensor=4))
mesh = sharding.make_mesh(cfg.mesh)
tx = make_optimizer(cfg.optim, cfg.train.num_steps)
model_cfg = small_model(vocab_size=256)  # JAX splits only evenly: 256 rows over tensor=4
state, _ = setup.init_state(Transformer(model_cfg), tx, mesh, sharding.rules_of(cfg), 0)
on_first = lambda tree: sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))
plan = memory.plan(cfg, model_cfg, dict(mesh.shape))
print(on_first(state.params), plan["params"], on_first(state.opt_state), plan["optimizer state"])
"""


def test_plan_matches_the_shards_jax_places():
  env = dict(os.environ, XLA_FLAGS=xla_flags(8), PYTHONPATH=ROOT)
  result = subprocess.run([sys.executable, "-c", SHARDED_STATE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr
  placed_params, planned_params, placed_opt, planned_opt = map(int, result.stdout.split())
  assert planned_params == placed_params and planned_opt == placed_opt


def test_lora_trains_and_keeps_optimizer_state_for_adapters_and_heads_and_holds_the_base_once():
  # small_model with LoRA r = 4 on every projection: per layer q, k, v, out (64 + 64) x 4 each,
  # up and down (64 + 128) x 4 each.
  adapters, n, head = 2 * (4 * 128 * 4 + 2 * 192 * 4), SMALL_PARAMS * 4, (64 + 1) * 4
  cfg = ppo.get_config("tiny")
  plan = memory.plan(cfg, small_model(lora_rank=4), mesh())
  # The policy's and the critic's adapters, the critic's value head; gradients and Adam's moments of those only.
  assert plan["params"] == 2 * adapters * 4 + head and plan["gradients"] == plan["params"]
  assert plan["optimizer state"] == 2 * plan["params"] + 2 * 8
  # One base (the reference: the policy with adapters off; the critic's sits on the reward model) and the RM.
  assert plan["frozen models"] == 2 * n + head
  assert "policy base = reference + reward model" in plan.table()
  full = memory.plan(cfg, small_model(), mesh())
  assert full["total"] - plan["total"] == full["params"] + full["optimizer state"] + full["gradients"] - (
      plan["params"] + plan["optimizer state"] + plan["gradients"])
  sft_plan = memory.plan(pretrain.get_config("tiny"), small_model(lora_rank=4), mesh())
  assert sft_plan["params"] == adapters * 4 and sft_plan["frozen models"] == n
