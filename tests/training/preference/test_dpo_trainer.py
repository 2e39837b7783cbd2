"""The DPO stage end to end on shrunk upstream stages."""

import json
import os

import pytest

from rlhf_jax import stages
from rlhf_jax.errors import UserError


def test_dpo_stage_trains_on_the_reward_runs_pairs_and_reports_like_rl(tiny_dpo, tiny_upstream, tmp_path):
  tiny_dpo.update(tiny_upstream)
  tiny_dpo.data.update(pack=True, share_prompt=True)  # the training pairs packed in rows, each prompt once;
  # the held-out ones one per row
  summary = stages.run(tiny_dpo, str(tmp_path))
  assert not (tmp_path / "upstream").exists()  # it started from the given runs
  for key in ("eval/gold_reward", "eval/ref_gold_reward", "eval/proxy_reward", "eval/kl", "eval/pair_accuracy",
              "eval/pair_margin"):
    assert key in summary, key
  assert 0 <= summary["eval/pair_accuracy"] <= 1 and summary["step"] == 4
  assert set(os.listdir(tmp_path / "checkpoints" / "4")) >= {"policy", "policy_opt"}
  train = [json.loads(line) for line in open(tmp_path / "metrics.jsonl") if '"grad_norm"' in line]
  assert train and {"loss", "accuracy", "margin", "chosen_reward", "rejected_reward"} <= set(train[-1])
  samples = open(tmp_path / "samples" / "step_000004.txt").read()
  assert "  dpo: " in samples and "  sft: " in samples


def test_bad_dpo_fields_fail_before_any_upstream_stage_runs(tiny_dpo, tmp_path):
  tiny_dpo.dpo.loss = "orpo"
  with pytest.raises(UserError, match="dpo.loss='orpo': choose one of sigmoid, conservative, robust, ipo, hinge, "
                                      "simpo"):
    stages.run(tiny_dpo, str(tmp_path))
  assert not os.path.exists(tmp_path / "upstream")
  tiny_dpo.dpo.update(dict(loss="sigmoid", soft_labels=True))
  with pytest.raises(UserError, match="dpo.soft_labels=True takes each pair's label as conservative DPO's flip rate"):
    stages.run(tiny_dpo, str(tmp_path))
  assert not os.path.exists(tmp_path / "upstream")
