"""Every stage starts from exactly what it names: upstream weights arrive bit for bit, and an
RL stage's policy is its reference before the first update.

Each test runs a stage up to its host loop (`start_of`) and compares the state it would train
from with the upstream run's final checkpoint, read by orbax alone. A key the loader failed
to find would keep its fresh init and show here.
"""

import os

import flax
import numpy as np
import pytest

from rlhf_jax import stages
from tests.conftest import final_params, make_tiny_sft, start_of


def assert_same_params(got, want, what: str) -> None:
  flat_got = flax.traverse_util.flatten_dict(got, sep="/")
  flat_want = flax.traverse_util.flatten_dict(want, sep="/")
  assert sorted(flat_got) == sorted(flat_want), what
  for key, value in flat_want.items():
    np.testing.assert_array_equal(np.asarray(flat_got[key]), np.asarray(value), err_msg=f"{what}: {key}")


def test_sft_starts_from_pretrainings_final_params(tiny_upstream, tmp_path, monkeypatch):
  pretrain_dir = os.path.join(os.path.dirname(tiny_upstream["init_from"]), "pretrain")
  config = make_tiny_sft()
  config.init_from = pretrain_dir
  _, state = start_of(lambda: stages.run(config, str(tmp_path)), monkeypatch)
  assert int(state.step) == 0
  assert_same_params(state.params, final_params(pretrain_dir), "sft from pretrain")


@pytest.mark.parametrize("stage", ["ppo", "dpo"])
def test_policy_reference_critic_and_scorer_start_from_their_runs_and_eval_starts_at_kl_0(
    stage, tiny_ppo, tiny_dpo, tiny_upstream, tmp_path, monkeypatch):
  config = tiny_ppo if stage == "ppo" else tiny_dpo
  config.update(tiny_upstream)
  loop, state = start_of(lambda: stages.run(config, str(tmp_path)), monkeypatch)
  sft, reward = final_params(tiny_upstream["init_from"]), final_params(tiny_upstream["reward_from"])
  assert_same_params(state.policy, sft, "policy from sft")
  assert_same_params(state.ref, sft, "reference from sft")
  assert_same_params(state.reward, reward, "scorer from the reward model")
  if stage == "ppo":  # the default critic: the reward model, its reward head as the value head
    critic, backbone = dict(state.value), dict(reward)
    assert_same_params(critic.pop("value_head"), backbone.pop("reward_head"), "value head from reward head")
    assert_same_params(critic, backbone, "critic backbone from the reward model")
  else:
    assert state.value is None
  # Before any update the policy is the reference: the same samples (one rng), the same gold
  # and proxy scores, and a KL of exactly 0.
  metrics = loop.evaluate(state, 0)
  assert metrics["eval/kl"] == 0.0
  assert metrics["eval/gold_reward"] == metrics["eval/ref_gold_reward"]
  assert metrics["eval/proxy_reward"] == metrics["eval/ref_proxy_reward"]
  assert metrics["eval/response_length"] > 0
