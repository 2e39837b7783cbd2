"""Off-policy PPO (and multi-turn GRPO) with the sampler on devices of its own, against the same run colocated.

Run by tests/training/test_off_policy.py in a child process with 8 simulated CPU devices
(`python -m tests.off_policy_check`). The trainer holds devices 0-3; the sampler, on devices
4-7, gets the policy's weights by a transfer between the meshes after every update. With the
sampler's mesh shaped as the trainer's, the run equals the colocated one on devices 0-3 bit
for bit; with another shape (the weights resharded on the way) it runs and its sampler agrees
with its trainer. Prints one JSON object.
"""

import json

import jax
import ml_collections
import numpy as np

from configs import rl
from rlhf_jax import sharding
from rlhf_jax.data.prompts import prompt_batch
from rlhf_jax.training.rl.multi_turn_off_policy import compile_multi_turn_off_policy
from rlhf_jax.training.rl.off_policy import compile_off_policy
from tests.mesh_check import RULES, multi_turn_setup, ppo_setup, random_tokens

ITERATIONS, ROWS = 3, 16


def mesh_of(devices, data=1, fsdp=1, tensor=1):
  return sharding.make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor)), devices)


def run(train_mesh, sample_mesh) -> dict:
  models, (policy_tx, value_tx), state, shardings, score_fn, rl_cfg = ppo_setup(rl.get_config("tiny"), train_mesh,
                                                                              off_policy_steps=1)
  batch = lambda i: sharding.put_batch({"tokens": random_tokens(i, (ROWS, 8)), "mask": np.ones((ROWS, 8), np.int32)},
                                       sample_mesh)
  driver, state, _ = compile_off_policy(state, shardings, train_mesh, sample_mesh, RULES, models, policy_tx, value_tx,
                                        score_fn, rl_cfg, (batch(0)["tokens"], batch(0)["mask"]))
  state = driver.prefill(state, [batch(0)])
  metrics = []
  for i in range(ITERATIONS):
    state, m = driver(state, batch(i + 1))
    metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
  view = driver.view(state)
  up = view.policy["layer_0"]["mlp"]["up"]["kernel"]
  return {"metrics": metrics, "policy": jax.device_get(state.policy),
          "sampler_devices": sorted(d.id for d in up.devices()),
          "sampler_shard": list(up.addressable_shards[0].data.shape),
          "trainer_devices": sorted(d.id for d in state.policy["layer_0"]["mlp"]["up"]["kernel"].devices())}


def multi_turn_run(train_mesh, sample_mesh) -> dict:
  """Multi-turn GRPO one iteration behind (mesh_check's echo task): the turns on the host with
  the sampler on `sample_mesh`, the update on `train_mesh`."""
  built = multi_turn_setup(train_mesh, sample_mesh, off_policy_steps=1)
  driver, state, _ = compile_multi_turn_off_policy(
      built["state"], built["shardings"], train_mesh, sample_mesh, RULES, built["models"], built["policy_tx"], None,
      built["rl_cfg"], rollouts=built["rollouts"], host=built["host"], rows=16)
  batch = lambda i: prompt_batch(built["prompts"], i, 4, sample_mesh)
  state = driver.prefill(state, [batch(0)])
  metrics = []
  for i in range(ITERATIONS):
    state, m = driver(state, batch(i + 1))
    metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
  return {"metrics": metrics, "policy": jax.device_get(state.policy)}


def main():
  assert jax.device_count() >= 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
  devices = jax.devices()
  trainer = mesh_of(devices[:4], data=4)
  colocated = run(trainer, trainer)
  split = run(trainer, mesh_of(devices[4:], data=4))
  resharded = run(mesh_of(devices[:4], fsdp=4), mesh_of(devices[4:], data=2, tensor=2))
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  untimed = lambda rows: [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]
  report = {"split_equals_colocated": same(split["policy"], colocated["policy"])
            and untimed(split["metrics"]) == untimed(colocated["metrics"])}
  turns = {name: multi_turn_run(trainer, sample_mesh) for name, sample_mesh in (("colocated", trainer),
                                                                                ("split", mesh_of(devices[4:], data=4)))}
  report["multi_turn"] = {"split_equals_colocated": same(turns["split"]["policy"], turns["colocated"]["policy"])
                          and untimed(turns["split"]["metrics"]) == untimed(turns["colocated"]["metrics"]),
                          "staleness": max(row["rl/staleness"] for t in turns.values() for row in t["metrics"]),
                          "turns": turns["split"]["metrics"][-1]["turns"]}
  for name, result in (("colocated", colocated), ("split", split), ("resharded", resharded)):
    report[name] = {k: result[k] for k in ("sampler_devices", "sampler_shard", "trainer_devices")}
    report[name]["staleness"] = max(row["rl/staleness"] for row in result["metrics"])
    report[name]["transfer_logged"] = all("time/transfer" in row for row in result["metrics"])
    report[name]["kl"] = result["metrics"][-1]["kl"]
  print(json.dumps(report))


if __name__ == "__main__":
  main()
