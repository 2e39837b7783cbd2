"""Compute accounting: every logged row's cumulative FLOPs, samples and seconds, across a resume."""

import dataclasses
import json
import os
import shutil

import pytest

from rlhf_jax import flops, stages
from rlhf_jax.models.config import ModelConfig
from rlhf_jax.training.core.compute import ComputeClock, StepCost


def test_the_clock_counts_steps_and_leaves_out_what_it_is_told():
  clock = ComputeClock(StepCost(10.0, samples=4), seconds_before=100.0)
  at = clock.at(3)
  assert at["compute/flops"] == 30.0 and at["compute/samples"] == 12 and 100.0 <= at["compute/seconds"] < 101.0
  clock.pause(50.0)  # an evaluation's seconds
  assert clock.at(3)["compute/seconds"] < 51.0


def test_every_row_carries_cumulative_compute_and_seconds_go_on_after_a_resume(tiny_pretrain, tmp_path):
  tiny_pretrain.train.update(dict(num_steps=6, log_every=1, eval_every=2, checkpoint_every=2))
  stages.run(tiny_pretrain, str(tmp_path))
  first = [json.loads(line) for line in open(tmp_path / "metrics.jsonl") if json.loads(line)["step"] <= 4]
  shutil.rmtree(tmp_path / "checkpoints" / "6")  # as if killed after the checkpoint of step 4
  os.remove(tmp_path / "summary.json")
  stages.run(tiny_pretrain, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  model = ModelConfig.from_dict(json.load(open(tmp_path / "model.json")))
  per_step = flops.train(model, tiny_pretrain.data.batch_size, tiny_pretrain.data.seq_len)
  assert per_step > 0 and rows[:len(first)] == first
  for row in rows:  # train rows and eval rows alike
    assert row["compute/flops"] == pytest.approx(row["step"] * per_step) and row["compute/samples"] == 0
  seconds = [row["compute/seconds"] for row in rows if "loss" in row]  # the train rows, in order
  assert all(b > a for a, b in zip(seconds, seconds[1:])) and seconds[4] > seconds[3] > 0


def test_an_rl_iteration_counts_generation_scoring_and_updates():
  cfg = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_len=64)
  grpo = flops.rl_iteration(cfg, 64, 16, 32, epochs=1, critic=False, reward_model=False)
  with_model = flops.rl_iteration(cfg, 64, 16, 32, epochs=1, critic=False, reward_model=True)
  assert with_model - grpo == pytest.approx(flops.score(cfg, 64, 48))
  ppo = flops.rl_iteration(cfg, 64, 16, 32, epochs=4, critic=True)
  assert ppo > 4 * flops.train(cfg, 64, 48) > with_model
  # The first update differentiating the scoring pass: no forward of the policy or critic of its own.
  reused = flops.rl_iteration(cfg, 64, 16, 32, epochs=4, critic=True, reused_scoring=True)
  assert ppo - reused == pytest.approx(flops.forward(cfg, 64, 48) + flops.forward(cfg, 64, 48, logits=False))
  remax = flops.rl_iteration(cfg, 64, 16, 32, epochs=1, critic=False, reward_model=True, greedy_rows=64)
  assert remax - with_model == pytest.approx(flops.generate(cfg, 64, 16, 32) + flops.score(cfg, 64, 48))
  assert dataclasses.replace(cfg, d_model=128).num_params() > cfg.num_params()  # the counter's shapes are the model's


def test_a_sliding_window_layer_attends_to_at_most_its_window():
  full = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_len=64)
  local = dataclasses.replace(full, layer_types=("sliding_attention", "full_attention"), sliding_window=8)
  attention = 4 * full.n_heads * full.dim_per_head  # per query and key
  # Over 48 tokens the sliding layer's queries see 8 keys, not 48; within the window nothing differs.
  assert flops.forward(full, 2, 48) - flops.forward(local, 2, 48) == pytest.approx(2 * 48 * attention * (48 - 8))
  assert flops.forward(local, 2, 8) == flops.forward(full, 2, 8)
  assert flops.score(full, 2, 48) - flops.score(local, 2, 48) == pytest.approx(2 * 48 * attention * (48 - 8))
  assert flops.generate(full, 2, 16, 4) - flops.generate(local, 2, 16, 4) == pytest.approx(
      flops.forward(full, 2, 16) - flops.forward(local, 2, 16) + 2 * attention * sum(16 + i + 1 - 8 for i in range(3)))
