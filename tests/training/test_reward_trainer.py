"""The reward stage end to end: generated pairs, Bradley-Terry training, normalisation."""

import json
import os

import numpy as np

from rlhf_jax import stages


def test_reward_stage_generates_pairs_and_reports_accuracy(tiny_reward, tmp_path):
  summary = stages.run(tiny_reward, str(tmp_path))
  for stage in ("pretrain", "sft"):
    assert os.path.exists(tmp_path / "upstream" / stage / "summary.json")
  with open(tmp_path / "preferences_train.jsonl") as f:
    pairs = [json.loads(line) for line in f]
  assert len(pairs) == 64 and all(-1 <= g <= 1 for p in pairs for g in p["gold"])
  assert {"prompt", "chosen", "rejected"} <= set(pairs[0])
  assert 0 <= summary["eval/accuracy"] <= 1 and np.isfinite(summary["eval/margin"])
  assert summary["reward_gain"] > 0 and "eval/gold_correlation" in summary
  model = json.load(open(tmp_path / "model.json"))
  assert model["heads"] == ["reward"]
