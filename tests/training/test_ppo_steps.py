"""The compiled PPO iteration: raises a programmatic reward, leaves frozen params untouched."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_jax.algorithms.kl import init_kl_controller
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.ppo_steps import PPOConfig, ppo_iteration
from rlhf_jax.training.rl_state import RLState
from tests.conftest import small_model

VOCAB, EOS, PAD, TARGET = 16, 15, 14, 3


def init(model, seed):
  return nn.meta.unbox(model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"])


def setup(lr=3e-3, **cfg_overrides):
  policy = Transformer(small_model(vocab_size=VOCAB))
  critic = Transformer(small_model(vocab_size=VOCAB, heads=("value",)))
  policy_tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr, eps=1e-5))
  value_tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr, eps=1e-5))
  params, value_params = init(policy, 0), init(critic, 1)
  reward_params = {"w": jnp.arange(3.0)}  # stands in for a frozen reward model
  state = RLState(step=jnp.int32(0), policy=params, policy_opt=policy_tx.init(params), value=value_params,
                  value_opt=value_tx.init(value_params), ref=jax.tree.map(jnp.copy, params), reward=reward_params,
                  kl=init_kl_controller(0.01), rng=jax.random.key(2))
  cfg = PPOConfig(max_new_tokens=8, eos_id=EOS, pad_id=PAD, temperature=1.0, minibatches=2,
                  penalise_no_eos=False, **cfg_overrides)
  target_fraction = lambda state, tokens, mask, out: jnp.sum((out.tokens == TARGET) * out.mask, 1) / jnp.maximum(
      jnp.sum(out.mask, 1), 1)
  step = jax.jit(functools.partial(ppo_iteration, policy=policy, critic=critic, policy_tx=policy_tx,
                                   value_tx=value_tx, score_fn=target_fraction, cfg=cfg))
  prompts = jnp.asarray(np.random.default_rng(0).integers(0, 13, (32, 4)), jnp.int32)
  return state, step, prompts


def test_ppo_raises_a_programmatic_reward():
  state, step, prompts = setup()
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
