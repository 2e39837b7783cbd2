"""The PPO stage end to end on shrunk upstream stages: state, evaluation, summary."""

import json
import os

from rlhf_jax import stages
from tests.conftest import run_until_crash


def test_ppo_stage_runs_its_upstream_and_reports_gold_and_kl(tiny_ppo, tmp_path):
  summary = stages.run(tiny_ppo, str(tmp_path))
  for stage in ("pretrain", "sft", "reward"):
    assert os.path.exists(tmp_path / "upstream" / stage / "summary.json")
  for key in ("eval/gold_reward", "eval/ref_gold_reward", "eval/proxy_reward", "eval/kl"):
    assert key in summary
  assert -1 <= summary["eval/gold_reward"] <= 1 and summary["eval/kl"] == summary["eval/kl"]
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  train = [r for r in rows if "clip_fraction" in r]
  assert train and {"score", "kl", "kl_coef", "entropy", "approx_kl", "value_loss", "explained_variance",
                    "response_length", "no_eos_fraction"} <= set(train[-1])
  assert os.path.exists(tmp_path / "samples" / "step_000004.txt")


def test_full_pipeline_chains_all_four_stages_and_prints_the_report(tiny_ppo, capsys, tmp_path):
  from configs import pipeline
  config = pipeline.get_config("tiny")
  reward = tiny_ppo.upstream.reward
  sft = reward.upstream.sft
  config.pretrain, config.sft, config.reward, config.ppo = sft.upstream.pretrain, sft, reward, tiny_ppo
  for stage in ("sft", "reward", "ppo"):
    del config[stage].upstream
  summary = stages.run(config, str(tmp_path))
  assert list(summary) == ["pretrain", "sft", "reward", "ppo"]
  ppo_config = json.load(open(tmp_path / "ppo" / "config.json"))
  assert ppo_config["init_from"] == str(tmp_path / "sft") and ppo_config["reward_from"] == str(tmp_path / "reward")
  printed = capsys.readouterr().out
  assert "PPO vs SFT by the gold judge" in printed and "eval/accuracy" in printed


def test_interrupted_ppo_resumes_to_the_same_metrics(tiny_ppo, tmp_path, monkeypatch):
  whole = stages.run(tiny_ppo.copy_and_resolve_references(), str(tmp_path / "whole"))
  resumed_cfg = tiny_ppo.copy_and_resolve_references()
  resumed_cfg.init_from = str(tmp_path / "whole" / "upstream" / "sft")
  resumed_cfg.reward_from = str(tmp_path / "whole" / "upstream" / "reward")
  # Crash at step 3, after the checkpoint at step 2: policy, critic, optimizers, KL controller, rng.
  run_until_crash(lambda: stages.run(resumed_cfg.copy_and_resolve_references(), str(tmp_path / "resumed")),
                  monkeypatch, step=3)
  assert not os.path.exists(tmp_path / "resumed" / "summary.json")
  resumed = stages.run(resumed_cfg, str(tmp_path / "resumed"))
  rows = lambda d: [json.loads(line) for line in open(tmp_path / d / "metrics.jsonl")]
  assert rows("resumed") == rows("whole")
  assert resumed["eval/gold_reward"] == whole["eval/gold_reward"] and resumed["eval/kl"] == whole["eval/kl"]
