"""Every stage starts from exactly what it names: upstream weights arrive bit for bit, and an
RL stage's policy is its reference before the first update.

Each test runs a stage up to its host loop (`start_of`) and compares the state it would train
from with the upstream run's final checkpoint, read by orbax alone. A key the loader failed
to find would keep its fresh init and show here.
"""

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import stages
from rlhf_jax.models.sampling import SamplingParams
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
def test_policy_reference_critic_and_scorer_start_from_their_runs_and_evals_kl_is_against_the_reference(
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
  else:  # DPO's own state: a policy beside its reference and scorer, no critic
    assert type(state).__name__ == "PolicyState" and not hasattr(state, "value")
  # Before any update the policy is the reference: the same samples (one rng), the same gold
  # and proxy scores, and a KL of exactly 0.
  metrics = loop.evaluate(state, 0)
  assert metrics["eval/kl"] == 0.0
  assert metrics["eval/gold_reward"] == metrics["eval/ref_gold_reward"]
  assert metrics["eval/proxy_reward"] == metrics["eval/ref_proxy_reward"]
  assert metrics["eval/response_length"] > 0
  if stage == "ppo":
    check_eval_kl_once_the_policy_moved(loop, state, config)


def check_eval_kl_once_the_policy_moved(loop, state, config):
  """Issue 38: the KL was checked only at step 0, where any KL is 0, so one measured against the
  wrong params passed. Here the policy is moved off the reference and eval/kl is recomputed
  from the evaluation's own samples with plain forward passes."""
  leaves, tree = jax.tree.flatten(state.policy)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  state = state.replace(policy=jax.tree.unflatten(tree, [x + 0.02 * jax.random.normal(k, x.shape, x.dtype)
                                                          for x, k in zip(leaves, keys)]))
  evaluator, step = loop.evaluate, 3
  kl = evaluator(state, step)["eval/kl"]

  temperature = config.sample.temperature
  prompts, mask = jnp.asarray(evaluator.prompts.tokens), jnp.asarray(evaluator.prompts.mask)
  rng = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), step)
  out = evaluator.sampler(state.policy, prompts, mask, rng, SamplingParams.make(temperature))
  tokens, full = jnp.concatenate([prompts, out.tokens], 1), jnp.concatenate([mask, out.mask], 1)

  def response_logprob(params):
    logits = evaluator.policy.apply({"params": params}, tokens, full).logits[:, :-1] / temperature
    picked = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tokens[:, 1:, None], -1)[..., 0]
    return jnp.sum(picked[:, prompts.shape[1] - 1:] * out.mask, axis=1)
  expected = float(jnp.mean(response_logprob(state.policy) - response_logprob(state.ref)))
  assert kl > 0.05 and kl == pytest.approx(expected, rel=1e-3, abs=1e-4)
