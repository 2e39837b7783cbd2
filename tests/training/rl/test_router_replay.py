"""Router replay on an MoE policy (rl.router_replay, R3): the sampler records every token's
experts; replayed, the trainer recomputes the sampler's log-probs even where its own router
would route elsewhere; the routing agreement is logged every iteration, and the load-balancing
loss joins the policy loss."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import rl as rl_configs
from rlhf_jax import rl_plan
from rlhf_jax.algorithms import presets
from rlhf_jax.algorithms.kl import init_kl_controller
from rlhf_jax.errors import UserError
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.rl import routing
from rlhf_jax.training.rl.rl_state import RLState
from rlhf_jax.training.rl.rl_steps import RLConfig, rl_iteration, sample_rollout, score_tokens
from tests.conftest import LLAMA, small_model
from tests.training.rl.test_rl_steps import init

VOCAB, EOS, PAD, TARGET = 16, 15, 14, 3
PROMPT = 4


def moe_model(k: int) -> Transformer:
  return Transformer(small_model(**{**LLAMA, "bias": "none"}, vocab_size=VOCAB, n_experts=4, experts_per_token=k,
                                 d_expert=32, router_aux_coef=0.01))


def build(k: int = 2, **cfg_overrides):
  """An MoE policy with top-`k` routing, GRPO's config, a state and 32 responses' prompts."""
  policy, tx = moe_model(k), optax.adam(3e-3)
  params = init(policy, 0)
  state = RLState(step=jnp.int32(0), policy=params, policy_opt=tx.init(params), value=None, value_opt=None,
                  ref=jax.tree.map(jnp.copy, params), reward=None, kl=init_kl_controller(0.01),
                  baseline=jnp.float32(0.0), rng=jax.random.key(2))
  fields = presets.resolve("grpo", {"temperature": 1.0, "penalise_no_eos": False, "stop_ids": (EOS,), **cfg_overrides})
  cfg = RLConfig(max_new_tokens=8, pad_id=PAD, algo="grpo", **fields)
  score_fn = lambda state, tokens, mask, out: jnp.mean((out.tokens == TARGET) * out.mask, axis=1)
  prompts = jnp.asarray(np.random.default_rng(0).integers(0, 13, (32 // cfg.samples_per_prompt, PROMPT)), jnp.int32)
  return state, dict(policy=policy, score_fn=score_fn, cfg=cfg), tx, prompts


def sampled_and_rescored(k: int, sampler_params):
  """A rollout sampled under `sampler_params(params)` and rescored under the state's params, live
  and replayed: {replay: (max |sampler - trainer| log-prob, routing agreement)}."""
  state, parts, _, prompts = build(k)
  sample = jax.jit(functools.partial(sample_rollout, policy=parts["policy"], score_fn=None, cfg=parts["cfg"]))
  sampled = sample(state.replace(policy=sampler_params(state.policy)), prompts, jnp.ones_like(prompts),
                   jax.random.key(5))
  real = np.asarray(sampled.response.mask) > 0
  assert sampled.response.experts.shape == (len(real), 2, PROMPT + 8, k) and real.sum() > 100
  results = {}
  for replay in (False, True):
    cfg = dataclasses.replace(parts["cfg"], router_replay=replay)
    scores = jax.jit(functools.partial(score_tokens, policy=parts["policy"], critic=None, cfg=cfg))(state, sampled)
    gap = np.abs(np.asarray(scores.logprobs) - np.asarray(sampled.response.logprobs))[real].max()
    results[replay] = gap, float(np.asarray(scores.agreement)[real].mean())
  return results


def test_replay_keeps_the_samplers_log_probs_where_its_router_has_moved():
  # Top-1 routing, renormalised: the gate is 1 whatever the router says, so the router decides
  # only where a token goes. Sampled with a perturbed router (as a policy an update later would
  # route), the trainer's live router sends tokens elsewhere: other log-probs; replayed, the
  # experts are the sampler's and so are the log-probs.
  def moved_router(params):
    noise = lambda path, x: x + 0.5 * jax.random.normal(jax.random.key(7), x.shape) if "router" in str(path) else x
    return jax.tree_util.tree_map_with_path(noise, params)

  results = sampled_and_rescored(1, moved_router)
  (live_gap, live_agreement), (replay_gap, replay_agreement) = results[False], results[True]
  # The live router's agreement either way (replayed, its later layers see the replayed ones' outputs).
  assert live_agreement < 0.9 and replay_agreement < 0.9, results
  assert live_gap > 1e-2 and replay_gap <= 1e-6, results


def test_a_replayed_iteration_logs_the_agreement_and_trains_the_router_with_the_load_balancing_loss():
  # One minibatch, two epochs: the first update differentiates the scoring pass (its outputs hold
  # the load-balancing loss), the second runs its own replayed forward pass.
  state, parts, tx, prompts = build(2, router_replay=True, epochs=2, minibatches=1)
  step = jax.jit(functools.partial(rl_iteration, **parts, critic=None, policy_tx=tx, value_tx=None))
  router_before = np.asarray(state.policy["layer_0"]["mlp"]["router"])
  for _ in range(2):
    state, metrics = step(state, prompts, jnp.ones_like(prompts))
    # Sampled and scored under the same params: the recomputed log-probs are the sampler's, the
    # live router agrees, and the first update's ratio is 1.
    assert float(metrics["rollout/logprob_gap_max"]) <= 1e-6 and float(metrics["rollout/router_agreement"]) == 1.0
    assert float(metrics["max_ratio_deviation"]) < 1e-5
    # E * sum_e f_e P_e: k (2) when balanced, at most E * k (8).
    assert 1.5 < float(metrics["router_aux_loss"]) < 8.0, metrics
  assert float(metrics["skipped_updates"]) == 0
  # Replay fixes the router's choices, not its logits: the gates and the aux loss still train it.
  assert not np.array_equal(router_before, np.asarray(state.policy["layer_0"]["mlp"]["router"]))


def config_and_plan(batching="static", router_replay=True, packing=False, **plan_fields):
  cfg = rl_configs.get_config("tiny")
  cfg.rl.router_replay, cfg.rl.packing, cfg.sample.batching = router_replay, packing, batching
  return cfg, dataclasses.replace(rl_plan.resolve(cfg), **plan_fields)


def test_router_replay_is_refused_where_no_experts_are_recorded_or_none_exist():
  def refusal(policy_cfg, **fields):
    with pytest.raises(UserError) as error:
      routing.check(*config_and_plan(**fields), policy_cfg)
    assert "\n" not in str(error.value)
    return str(error.value)

  assert "this policy is dense" in refusal(small_model())
  moe = moe_model(2).cfg
  assert "rollout.engine=vllm" in refusal(moe, engine="vllm")
  assert "config.env (multi-turn)" in refusal(moe, driver="multi_turn")
  assert "rl.packing with an MoE policy" in refusal(moe, router_replay=False, packing=True)


@pytest.mark.parametrize("batching", ["static", "continuous", "paged"])
def test_router_replay_is_accepted_with_every_batching_of_the_jax_sampler(batching):
  """Continuous and paged batching record the static sampler's experts (tests/models/test_continuous.py)."""
  routing.check(*config_and_plan(batching), moe_model(2).cfg)
