"""The RL plan: each question about a run answered once, from the config, and recorded."""

import json
import re

import pytest

from configs import arithmetic
from configs import rl as rl_config
from rlhf_jax import memory, rl_plan, stages
from rlhf_jax.errors import UserError
from rlhf_jax.models.config import ModelConfig
from rlhf_jax.workdir import RunDir


def resolve(**overrides):
  cfg = rl_config.get_config("tiny")
  for field, value in overrides.items():
    section, _, name = field.rpartition("__")
    (cfg[section] if section else cfg)[name] = value
  return rl_plan.resolve(cfg)


def test_a_config_can_turn_off_what_the_preset_turns_on():
  # Issue 38: `--config.algo=dapo --config.rl.overlong_buffer=0` ran with the preset's penalty.
  dapo = resolve(algo="dapo")
  assert (dapo.fields["overlong_buffer"], dapo.origins["overlong_buffer"]) == (0.2, "preset")
  assert (dapo.kl_coef, dapo.origins["kl_coef"]) == (0.0, "preset")  # DAPO has no KL penalty
  off = resolve(algo="dapo", rl__overlong_buffer=0.0, rl__dynamic_sampling=False, kl_coef=0.1)
  assert (off.fields["overlong_buffer"], off.fields["dynamic_sampling"], off.kl_coef) == (0.0, False, 0.1)
  assert off.origins["overlong_buffer"] == off.origins["kl_coef"] == "config"
  assert resolve(algo="grpo").kl_coef == 0.2 and arithmetic.get_config().kl_coef == 0.05


def test_the_critic_the_reward_sources_and_the_driver_are_decided_once():
  ppo = resolve()
  assert (ppo.critic, ppo.origins["critic"], ppo.separate_critic, ppo.driver) == ("reward", "default", True, "fused")
  assert ppo.items == ("policy", "policy_opt", "value", "value_opt", "kl", "baseline", "rng")
  python = resolve(reward__fns=("exact_match",))
  assert python.critic == "sft" and python.unused_upstream == {"reward"} and python.driver == "host"
  shared = resolve(critic="shared")
  assert shared.critic == "shared" and not shared.separate_critic and "value" not in shared.items
  grpo = resolve(algo="grpo", rl__off_policy_steps=2)
  assert grpo.critic is None and grpo.driver == "off_policy" and grpo.items[-1] == "pending"
  with pytest.raises(UserError, match="algo='a2c': choose one of ppo"):
    resolve(algo="a2c")


def test_the_memory_plan_reads_the_rl_plan():
  ppo, shared = rl_config.get_config("tiny"), rl_config.get_config("tiny")
  shared.critic = "shared"
  model_cfg = ModelConfig.from_dict(ppo.model, vocab_size=512)
  ppo, shared = (memory.plan(c, model_cfg, dict(data=1, fsdp=1, tensor=1)) for c in (ppo, shared))
  assert "critic" in ppo.table() and "critic" not in shared.table()
  assert ppo.total > shared.total


def test_a_run_recorded_before_none_meant_unset_resumes(tmp_path):
  cfg = rl_config.get_config("tiny")
  old = json.loads(cfg.to_json_best_effort())
  old["rl"].update(advantage="", policy_loss="", loss_aggregation="", samples_per_prompt=0, epochs=0)
  (tmp_path / "config.json").write_text(json.dumps(old))
  RunDir(str(tmp_path)).record_config(cfg)  # the same run: no refusal
  old["rl"]["advantage"] = "rloo"
  (tmp_path / "config.json").write_text(json.dumps(old))
  with pytest.raises(UserError, match="other values of rl.advantage"):
    RunDir(str(tmp_path)).record_config(cfg)


def test_the_earlier_unset_values_say_what_replaced_them():
  for field, value, message in (("advantage", "", 'rl.advantage=\'\': choose one of gae'),
                                ("epochs", 0, "rl.epochs=0 must be >= 1")):
    cfg = rl_config.get_config("tiny")
    cfg.rl[field] = value
    with pytest.raises(UserError, match=re.escape(message) + ".*leave it unset, None"):
      stages.check_all(cfg)
