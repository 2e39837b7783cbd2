"""The RL stage end to end on shrunk upstream stages: state, evaluation, summary. Its resume
after a kill is the fault suite's (tests/test_faults.py); the pipeline running all four
stages and printing its report is the distributed test's one-process run."""

import json
import logging
import os
import re
import shutil

import numpy as np
import pytest

from rlhf_jax import stages
from rlhf_jax.errors import UserError
from tests.conftest import run_until_crash


def test_each_critic_and_critic_free_algo_trains_and_checkpoints_only_what_it_has(tiny_ppo, tiny_upstream,
                                                                                  tmp_path):
  for algo, critic in (("ppo", "sft"), ("ppo", "shared"), ("dapo", "reward")):
    cfg = tiny_ppo.copy_and_resolve_references()
    cfg.update(dict(algo=algo, critic=critic, **tiny_upstream))
    cfg.rl.oversample = 2 if algo == "dapo" else 0  # DAPO's refill: 2 extra prompts drawn
    cfg.train.update(dict(num_steps=2, eval_every=2, checkpoint_every=2))
    cfg.rl.accum_steps = 2
    workdir = tmp_path / f"{algo}_{critic}"
    summary = stages.run(cfg, str(workdir))
    assert summary["step"] == 2 and summary["eval/kl"] == summary["eval/kl"]
    saved = set(os.listdir(workdir / "checkpoints" / "2"))
    assert {"policy", "policy_opt", "baseline"} <= saved
    assert ("value" in saved) == (algo == "ppo" and critic != "shared")
    heads = json.load(open(workdir / "model.json"))["heads"]
    assert heads == (["value"] if (algo, critic) == ("ppo", "shared") else [])
    train = [json.loads(line) for line in open(workdir / "metrics.jsonl") if "clip_fraction" in line]
    assert ("value_loss" in train[-1]) == (algo == "ppo")
    assert {"score", "kl", "kl_coef", "entropy", "approx_kl", "response_length", "no_eos_fraction",
            "skipped_updates"} <= set(train[-1])
    assert ("kept_uninformative_fraction" in train[-1]) == (algo == "dapo")
    assert "reward/model" in train[-1] and "eval/ref_reward/model" in summary
    for key in ("eval/gold_reward", "eval/ref_gold_reward", "eval/proxy_reward", "eval/kl"):
      assert key in summary
    assert os.path.exists(workdir / "samples" / "step_000002.txt")
    plan = json.load(open(workdir / "plan.json"))  # what ran, each field with where it came from
    assert plan["critic"] == (None if algo == "dapo" else critic) and plan["driver"] == "fused"
    assert set(plan["checkpoint_items"]) <= saved and ("value" in plan["checkpoint_items"]) == ("value" in saved)
    assert plan["rl"]["advantage"] == {"value": "grpo" if algo == "dapo" else "gae", "origin": "preset"}
    assert plan["rl"]["accum_steps"] == {"value": 2, "origin": "config"}


def test_the_rl_preset_alone_starts_from_the_sft_run_its_reward_stage_ran_before_it(tiny_ppo, tiny_upstream,
                                                                                     tmp_path):
  # Issue 38: `--config=configs/rl.py:tiny` alone ran pretraining, SFT and the reward model, then
  # stopped with "set init_from": the SFT stage ran as the reward stage's upstream, not RL's.
  upstream = tmp_path / "run" / "upstream"  # the chain as that command leaves it, finished
  shutil.copytree(tiny_upstream["reward_from"], upstream / "reward")
  shutil.copytree(tiny_upstream["init_from"], upstream / "sft")
  cfg = tiny_ppo.copy_and_resolve_references()
  cfg.algo = "reinforce"
  cfg.train.update(dict(num_steps=1, eval_every=1, checkpoint_every=1))
  assert not cfg.init_from and not cfg.reward_from
  summary = stages.run(cfg, str(tmp_path / "run"))
  assert summary["step"] == 1
  recorded = json.load(open(tmp_path / "run" / "config.json"))
  assert (recorded["init_from"], recorded["reward_from"]) == (str(upstream / "sft"), str(upstream / "reward"))


def test_bad_rl_fields_fail_before_any_upstream_stage_runs(tiny_ppo, tmp_path):
  tiny_ppo.critic = "twin"
  with pytest.raises(UserError, match="critic='twin'"):
    stages.run(tiny_ppo, str(tmp_path))
  tiny_ppo.critic, tiny_ppo.algo = "reward", "a2c"
  with pytest.raises(UserError, match="algo='a2c': choose one of ppo, reinforce, rloo, grpo, remax, dr_grpo, "
                                      "dapo, gspo, cispo, reinforce_pp"):
    stages.run(tiny_ppo, str(tmp_path))
  tiny_ppo.algo, tiny_ppo.rl.policy_loss = "grpo", "trpo"
  with pytest.raises(UserError, match="rl.policy_loss='trpo': choose one of clip, dual_clip, gspo, cispo"):
    stages.run(tiny_ppo, str(tmp_path))
  tiny_ppo.rl.policy_loss, tiny_ppo.rl.loss_aggregation = None, "median"
  with pytest.raises(UserError, match="rl.loss_aggregation='median': choose one of token_mean"):
    stages.run(tiny_ppo, str(tmp_path))
  tiny_ppo.rl.loss_aggregation = None
  tiny_ppo.algo, tiny_ppo.rl.samples_per_prompt = "rloo", 1
  with pytest.raises(UserError, match="samples_per_prompt must be >= 2"):
    stages.run(tiny_ppo, str(tmp_path))
  tiny_ppo.algo, tiny_ppo.rl.samples_per_prompt, tiny_ppo.rl.oversample = "grpo", None, 4
  with pytest.raises(UserError, match="rl.oversample=4: .* needs rl.dynamic_sampling=True"):
    stages.run(tiny_ppo, str(tmp_path))
  tiny_ppo.algo, tiny_ppo.rl.oversample = "ppo", 0
  tiny_ppo.rl.rollout_correction = "icepop"
  with pytest.raises(UserError, match="rl.rollout_correction='icepop': choose one of none, token_tis"):
    stages.run(tiny_ppo, str(tmp_path))
  tiny_ppo.rl.rollout_correction, tiny_ppo.rl.rollout_correction_bounds = "token_reject", (1.2, 2.0)
  with pytest.raises(UserError, match=r"rollout_correction_bounds=\(1.2, 2.0\) hold 1"):
    stages.run(tiny_ppo, str(tmp_path))
  tiny_ppo.rl.rollout_correction, tiny_ppo.rl.rollout_correction_bounds = "none", (0.5, 2.0)
  tiny_ppo.critic = "shared"
  tiny_ppo.rl.accum_steps = 3
  with pytest.raises(UserError, match="rl.minibatches x rl.accum_steps = 6"):
    stages.run(tiny_ppo, str(tmp_path))
  tiny_ppo.critic, tiny_ppo.rl.accum_steps = "auto", 1
  tiny_ppo.env.tools = ("calculator",)  # multi-turn: no greedy rollouts for ReMax's baseline yet
  tiny_ppo.algo, tiny_ppo.reward.fns = "remax", ("exact_match",)
  with pytest.raises(UserError, match="with algo=remax's greedy baseline is not supported yet"):
    stages.run(tiny_ppo, str(tmp_path))
  assert not os.path.exists(tmp_path / "upstream")


def test_vmapped_seeds_match_separate_runs_keep_their_own_logs_and_resume(tiny_ppo, tiny_upstream, tmp_path,
                                                                          monkeypatch, caplog):
  tiny_ppo.update(tiny_upstream)
  single = stages.run(tiny_ppo.copy_and_resolve_references(), str(tmp_path / "single"))
  cfg = tiny_ppo.copy_and_resolve_references()
  cfg.vmap_seeds = 2
  # Killed at step 3 (after the stacked checkpoint at step 2), then resumed.
  run_until_crash(lambda: stages.run(cfg.copy_and_resolve_references(), str(tmp_path / "vmapped")), monkeypatch,
                  step=3)
  with caplog.at_level(logging.INFO, logger="absl"):
    summary = stages.run(cfg, str(tmp_path / "vmapped"))
  # From the checkpoint of step 2, not from scratch (which would log the same metrics again).
  assert re.findall(r"resumed from \S+ at step (\d+)", caplog.text) == ["2"]
  rows = lambda d: [json.loads(line) for line in open(d / "metrics.jsonl")]
  seed0, seed1 = rows(tmp_path / "vmapped" / "seed_0"), rows(tmp_path / "vmapped" / "seed_1")
  whole = rows(tmp_path / "single")
  assert [r["step"] for r in seed0] == [r["step"] for r in whole]
  for ours, theirs in zip(seed0, whole):  # seed 0 of the vmapped program is the single run
    for key in ("score", "kl", "eval/gold_reward", "eval/kl"):
      if key in theirs:
        assert ours[key] == pytest.approx(theirs[key], rel=1e-3, abs=1e-4), key
  assert seed1[0]["score"] != seed0[0]["score"]  # another seed samples other responses
  assert json.load(open(tmp_path / "vmapped" / "seed_1" / "config.json"))["seed"] == 1
  per_seed = [json.load(open(tmp_path / "vmapped" / f"seed_{s}" / "summary.json")) for s in (0, 1)]
  assert summary["seeds"] == [0, 1]
  assert summary["eval/gold_reward"] == pytest.approx(np.mean([p["eval/gold_reward"] for p in per_seed]))
  assert single["step"] == summary["step"] == 4
