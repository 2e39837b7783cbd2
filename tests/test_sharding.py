"""Meshes: shapes from the config, params laid out by the logical rules, and the steps of
pretraining, PPO and DPO giving the same numbers on 8 simulated devices as on one."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import pytest

from configs import common
from rlhf_jax import sharding
from rlhf_jax.errors import UserError
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.core.setup import boxed_params
from tests.conftest import small_model, xla_flags
from tests.test_main import ROOT


def mesh_cfg(data=-1, fsdp=1, tensor=1):
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def test_mesh_shape_fills_the_remaining_axis():
  assert sharding.mesh_shape(mesh_cfg(), 8) == (8, 1, 1)
  assert sharding.mesh_shape(mesh_cfg(fsdp=2, tensor=2), 8) == (2, 2, 2)
  assert sharding.mesh_shape(mesh_cfg(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 2)
  with pytest.raises(UserError, match="does not divide the 8 available devices"):
    sharding.mesh_shape(mesh_cfg(tensor=3), 8)
  with pytest.raises(UserError, match="at most one axis may be -1"):
    sharding.mesh_shape(mesh_cfg(fsdp=-1), 8)


EIGHT_DEVICES = dict(os.environ, XLA_FLAGS=xla_flags(8), PYTHONPATH=ROOT)


def mesh_check(*args) -> dict:
  """tests/mesh_check.py's report, from a child process with 8 simulated CPU devices."""
  result = subprocess.run([sys.executable, "-m", "tests.mesh_check", *args], cwd=ROOT, env=EIGHT_DEVICES,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_steps_match_one_device_on_data_fsdp_and_tensor_meshes():
  report = mesh_check()
  assert set(report) == {"pretrain", "lora", "rl", "rl_host", "rl_multi_turn", "dpo"}
  for stage, meshes in report.items():
    for mesh, found in meshes.items():
      assert found["metrics"] < 1e-4, (stage, mesh, found)  # loss, grad norm, KL, ...: relative
      assert found["updates"] < 1e-3, (stage, mesh, found)  # the param updates, relative in L2
      if stage == "rl_host":  # every row scored against its own prompt and column, on every mesh
        assert found["reward/aligned"] == 1.0 and 0 < found["reward/evens"] < 1, (mesh, found)
        assert "reward/model" not in found  # no reward model: not a component
      if stage == "rl_multi_turn":  # the environment answered every turn on every mesh
        assert 1.5 < found["turns"] <= 2 and 0 < found["policy_token_fraction"] < 1, found
        assert abs(found["reward/env"] - 0.15 * found["turns"]) < 1e-6, found
    skipped = {"rl_host": {"fsdp"}, "rl_multi_turn": {"fsdp"}, "lora": {"data"}}.get(stage, set())
    assert set(meshes) == {"one", "data", "fsdp", "tensor"} - skipped
    if stage == "lora":  # the adapters of up [64, 128]: A [64, 4] split as its input axis, B [4, 128] as its output
      assert meshes["fsdp"]["up_lora_shards"] == [[8, 4], [4, 128]], meshes["fsdp"]
      assert meshes["tensor"]["up_lora_shards"] == [[64, 4], [4, 32]], meshes["tensor"]
      continue
    # Per-device shards as the rules say: embed -> fsdp, mlp and vocab -> tensor.
    assert meshes["data"]["up_kernel_shard"] == [64, 128] and meshes["data"]["embedding_shard"] == [264, 64]
    if "fsdp" in meshes:
      assert meshes["fsdp"]["up_kernel_shard"] == [8, 128] and meshes["fsdp"]["embedding_shard"] == [264, 8]
    assert meshes["tensor"]["up_kernel_shard"] == [64, 32] and meshes["tensor"]["embedding_shard"] == [66, 64]


def test_moe_with_experts_split_over_4_devices_matches_one_device():
  moe = mesh_check("moe")
  step = moe["step"]  # pretraining on data 2 x fsdp 4 (shard_map's experts) against one device (ragged_dot's)
  assert step["metrics"] < 1e-4 and step["updates"] < 1e-3, step  # loss, router_aux_loss, ...; the updates
  assert step["router_aux_loss"] > 1, step  # the load-balancing loss was among the metrics compared
  # One expert per fsdp device; the router [embed, expert] gives its expert columns the fsdp axis too.
  assert step["shards"] == {"gate": [1, 64, 128], "up": [1, 64, 128], "down": [1, 128, 64], "router": [64, 1]}
  for mesh in ("expert", "expert_tensor"):  # an MoE layer's value and gradients, tensor 2 splitting the experts' f
    found = moe[mesh]
    assert found["shard_map"] and not found["kernel_gathered"], (mesh, found)
    assert found["value"] < 1e-4 and found["grads"] < 1e-3, (mesh, found)
  # No device receives more than its data group's 256 tokens (GSPMD's ragged_dot all-reduces
  # every pair of the batch there, f32[1024,128]).
  assert moe["expert"]["largest_collective"] == ["f32[256,64]", 256 * 64], moe["expert"]


def test_param_shardings_follow_the_rules():
  boxed = jax.eval_shape(lambda r: boxed_params(Transformer(small_model()), r), jax.random.key(0))
  logical = nn.get_partition_spec(boxed)
  assert logical["embed"]["embedding"] == P("vocab", "embed")
  assert logical["layer_0"]["attn"]["query"]["kernel"] == P("embed", "heads", "head_dim")
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), sharding.MESH_AXES)
  placed = sharding.logical_shardings(boxed, mesh, common.DEFAULT_RULES)
  assert placed["embed"]["embedding"].spec == P("tensor", "fsdp")
  assert placed["layer_0"]["mlp"]["up"]["kernel"].spec == P("fsdp", "tensor")
  assert placed["layer_0"]["attn"]["out"]["kernel"].spec == P("tensor", None, "fsdp")
