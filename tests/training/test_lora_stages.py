"""LoRA in the training stages: only adapters and heads train and get optimizer state, the
reference is the SFT policy itself (the frozen base, adapters off), checkpoints hold the
adapters and name their base, runs resume bit for bit, and later stages read merged weights."""

import json
import os
import shutil

import flax
import jax
import numpy as np

from rlhf_jax import sharding, stages
from rlhf_jax.interop import hf
from rlhf_jax.interop.export import export_run
from rlhf_jax.models import lora
from rlhf_jax.models.config import ModelConfig
from rlhf_jax.training.core import setup
from rlhf_jax.workdir import RunDir
from tests.conftest import final_params, run_until_crash, start_of
from tests.test_main import read_metrics


def flat(tree):
  return flax.traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def assert_equal_trees(ours, theirs):
  ours, theirs = flat(ours), flat(theirs)
  assert set(ours) == set(theirs)
  for key in ours:
    np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def only_adapters_and(tree, heads=()) -> bool:
  return all(k.rsplit("/", 1)[-1] in lora.ADAPTER or k.split("/")[0] in heads for k in flat(tree))


def checkpoint_bytes(run_dir) -> int:
  step = max(int(n) for n in os.listdir(os.path.join(run_dir, "checkpoints")) if n.isdigit())
  root = os.path.join(run_dir, "checkpoints", str(step))
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)


def test_lora_ppo_trains_adapters_on_the_sft_base_and_resumes_bit_for_bit(tiny_ppo, tiny_upstream, tmp_path,
                                                                          monkeypatch):
  tiny_ppo.update(tiny_upstream)  # PPO, its critic from the reward model (critic=auto)
  cfg = tiny_ppo.copy_and_resolve_references()
  cfg.lora.rank = 8
  _, state = start_of(lambda: stages.run(cfg.copy_and_resolve_references(), str(tmp_path / "peek")), monkeypatch)
  # The reference is the SFT policy's params themselves: the frozen base, held once.
  assert_equal_trees(state.ref, final_params(tiny_upstream["init_from"]))
  assert state.lora and state.value_base == "reward"
  assert only_adapters_and(state.policy) and only_adapters_and(state.value, heads=("value_head",))
  # Optimizer state only for what trains: Adam's two moments of each adapter and head.
  for params, opt in ((state.policy, state.policy_opt), (state.value, state.value_opt)):
    sizes = lambda tree: sum(x.size for x in jax.tree.leaves(tree) if x.ndim)
    assert sizes(opt) == 2 * sizes(params)
  # Killed at step 3 (after the checkpoint of step 2), resumed: the metrics of an uninterrupted run.
  run = lambda name: stages.run(cfg.copy_and_resolve_references(), str(tmp_path / name))
  whole = run("whole")
  run_until_crash(lambda: run("resumed"), monkeypatch, step=3)
  untimed = lambda summary: {k: v for k, v in summary.items() if "seconds" not in k}
  assert untimed(run("resumed")) == untimed(whole)
  assert read_metrics(tmp_path / "resumed") == read_metrics(tmp_path / "whole")
  saved = final_params(tmp_path / "whole", "policy")
  assert only_adapters_and(saved) and any(np.any(x) for k, x in flat(saved).items() if k.endswith("lora_b"))
  assert json.load(open(tmp_path / "whole" / "lora.json"))["base"] == os.path.abspath(tiny_upstream["init_from"])
  # The checkpoints hold adapters, heads and their optimizer state: a small part of a full run's.
  full = tiny_ppo.copy_and_resolve_references()
  full.train.update(dict(num_steps=2, eval_every=2, checkpoint_every=2))
  stages.run(full, str(tmp_path / "full"))
  assert checkpoint_bytes(tmp_path / "whole") <= checkpoint_bytes(tmp_path / "full") / 4


def test_lora_reward_model_and_dpo_and_what_later_stages_read(tiny_reward, tiny_dpo, tiny_upstream, tmp_path,
                                                              monkeypatch):
  reward = tiny_reward.copy_and_resolve_references()
  reward.init_from = tiny_upstream["init_from"]
  reward.lora.update(dict(rank=4, alpha=8.0))
  workdir = tmp_path / "reward"
  os.makedirs(workdir)
  for split in ("train", "eval"):  # the shared reward run's generated pairs, not generated again
    shutil.copy(os.path.join(tiny_upstream["reward_from"], f"preferences_{split}.jsonl"), workdir)
  summary = stages.run(reward, str(workdir))
  assert np.isfinite(summary["eval/margin"])
  trained = final_params(workdir)
  assert only_adapters_and(trained, heads=("reward_head",))
  # What a later stage reads: the SFT weights with the adapters merged in, and the trained head.
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  merged = setup.run_params(RunDir(str(workdir)), mesh, ())
  cfg = setup.frozen_model_config(RunDir(str(workdir)))
  expected = lora.merge(lora.combine(final_params(tiny_upstream["init_from"]), trained),
                        ModelConfig.from_dict(json.load(open(workdir / "model.json"))))
  for key, value in flat(expected).items():
    np.testing.assert_allclose(flat(merged)[key], value, rtol=1e-6, atol=1e-7, err_msg=key)
  assert cfg.lora_rank == 0 and not lora.has_adapters(merged)
  # The export merges the adapters: reading it back gives the merged weights.
  assert export_run(str(workdir), str(tmp_path / "hf")).endswith("ForSequenceClassification")
  back = hf.HFSource(str(tmp_path / "hf")).read_params(merged)
  for key, value in flat(merged).items():
    np.testing.assert_allclose(flat(back)[key], value, rtol=1e-6, err_msg=key)
  # DPO with LoRA, scored by the LoRA reward model (merged): the reference is the SFT policy.
  dpo = tiny_dpo.copy_and_resolve_references()
  dpo.update(dict(init_from=tiny_upstream["init_from"], reward_from=str(workdir)))
  dpo.lora.rank = 4
  _, state = start_of(lambda: stages.run(dpo.copy_and_resolve_references(), str(tmp_path / "dpo")), monkeypatch,
                      stop=False)
  assert_equal_trees(state.ref, final_params(tiny_upstream["init_from"]))
  assert only_adapters_and(state.policy) and not lora.has_adapters(state.reward)
  assert np.isfinite(json.load(open(tmp_path / "dpo" / "summary.json"))["eval/pair_accuracy"])
