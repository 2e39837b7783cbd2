"""The compiled PPO iteration: raises a programmatic reward, leaves frozen params untouched."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax.algorithms.kl import init_kl_controller
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.ppo_steps import PPOConfig, ppo_iteration
from rlhf_jax.training.rl_state import RLState
from tests.conftest import small_model

VOCAB, EOS, PAD, TARGET = 16, 15, 14, 3


def init(model, seed):
  return nn.meta.unbox(model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"])


def setup(lr=3e-3, shared_critic=False, **cfg_overrides):
  """A small policy and critic (or, shared, one model with a value head), a state and a jitted step."""
  tx = lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr, eps=1e-5))
  if shared_critic:
    policy, critic = Transformer(small_model(vocab_size=VOCAB, heads=("value",))), None
    policy_tx, value_tx, params, value_params = tx(), None, init(policy, 0), None
  else:
    policy, critic = Transformer(small_model(vocab_size=VOCAB)), Transformer(small_model(vocab_size=VOCAB,
                                                                                        heads=("value",)))
    policy_tx, value_tx, params, value_params = tx(), tx(), init(policy, 0), init(critic, 1)
  reward_params = {"w": jnp.arange(3.0)}  # stands in for a frozen reward model
  state = RLState(step=jnp.int32(0), policy=params, policy_opt=policy_tx.init(params), value=value_params,
                  value_opt=value_tx.init(value_params) if value_tx else None, ref=jax.tree.map(jnp.copy, params),
                  reward=reward_params, kl=init_kl_controller(0.01), rng=jax.random.key(2))
  cfg = PPOConfig(max_new_tokens=8, eos_id=EOS, pad_id=PAD, temperature=1.0, minibatches=2,
                  penalise_no_eos=False, **cfg_overrides)
  target_fraction = lambda state, tokens, mask, out: jnp.sum((out.tokens == TARGET) * out.mask, 1) / jnp.maximum(
      jnp.sum(out.mask, 1), 1)
  step = jax.jit(functools.partial(ppo_iteration, policy=policy, critic=critic, policy_tx=policy_tx,
                                   value_tx=value_tx, score_fn=target_fraction, cfg=cfg))
  prompts = jnp.asarray(np.random.default_rng(0).integers(0, 13, (32, 4)), jnp.int32)
  return state, step, prompts


@pytest.mark.parametrize("shared_critic", [False, True])
def test_ppo_raises_a_programmatic_reward(shared_critic):
  state, step, prompts = setup(shared_critic=shared_critic)
  scores = []
  for _ in range(15):
    state, metrics = step(state, prompts, jnp.ones_like(prompts))
    scores.append(float(metrics["score"]))
  assert np.mean(scores[-3:]) > np.mean(scores[:3]) + 0.2, scores
  assert float(metrics["kl"]) > 0 and 0 <= float(metrics["clip_fraction"]) <= 1
  assert int(state.step) == 15


def test_frozen_params_are_bit_identical_after_updates():
  state, step, prompts = setup()
  ref_before, reward_before = jax.device_get(state.ref), jax.device_get(state.reward)
  policy_before = jax.device_get(state.policy)
  for _ in range(2):
    state, _ = step(state, prompts, jnp.ones_like(prompts))
  for before, after in ((ref_before, state.ref), (reward_before, state.reward)):
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
      np.testing.assert_array_equal(a, np.asarray(b))
  changed = [not np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(policy_before),
                                                                   jax.tree.leaves(state.policy))]
  assert all(changed)


def test_adaptive_kl_coefficient_moves_toward_the_target():
  state, step, prompts = setup(adaptive_kl=True, kl_target=1e-6, kl_horizon=100.0)
  coefs = []
  for _ in range(3):
    state, metrics = step(state, prompts, jnp.ones_like(prompts))
    coefs.append(float(state.kl.coef))
  # Iteration 1 samples from the reference itself: KL 0 < target, so the coefficient shrinks
  # by the clipped error (1 - 0.2 * 32 / 100); after that KL > target and it grows.
  np.testing.assert_allclose(coefs[0], 0.01 * (1 - 0.2 * 32 / 100), rtol=1e-5)
  assert coefs[2] > coefs[1] > coefs[0]


def test_gradient_accumulation_matches_whole_minibatches():
  # Same rollout, same shuffles: 2 microbatches per minibatch give the same update, because
  # each microbatch loss is weighted by its share of the minibatch's response tokens.
  results = []
  for accum_steps in (1, 2):
    state, step, prompts = setup(accum_steps=accum_steps)
    state, metrics = step(state, prompts, jnp.ones_like(prompts))
    results.append((jax.device_get(state.policy), jax.device_get(state.value), jax.device_get(metrics)))
  (policy_a, value_a, metrics_a), (policy_b, value_b, metrics_b) = results
  for a, b in zip(jax.tree.leaves((policy_a, value_a)), jax.tree.leaves((policy_b, value_b))):
    np.testing.assert_allclose(a, b, atol=2e-5)
  for key in ("policy_loss", "value_loss", "clip_fraction", "entropy"):
    np.testing.assert_allclose(metrics_a[key], metrics_b[key], rtol=1e-4, atol=1e-6)
