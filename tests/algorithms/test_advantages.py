"""The advantage estimators' registry: one signature, declared needs, and REINFORCE++ against
its definition (Hu 2025) on hand-worked rewards."""

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.algorithms import gae as gae_lib
from rlhf_jax.algorithms import ppo, reinforce
from rlhf_jax.algorithms.advantages import ADVANTAGES, AdvantageInputs, AdvantageParams
from rlhf_jax.algorithms.kl import penalised_rewards
from rlhf_jax.algorithms.masked import masked_mean, masked_var

# Two prompts x k = 2 responses of lengths 3, 2, 4, 1 (budget 4); scores 1, 0, 2, 2.
MASK = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], jnp.float32)
SCORES = jnp.array([1.0, 0.0, 2.0, 2.0])
KL = jnp.array([[0.1, -0.2, 0.3, 9.0], [0.2, 0.1, 9.0, 9.0], [0.0, 0.1, 0.1, 0.1], [0.5, 9.0, 9.0, 9.0]])


def inputs(kl_coef=0.5) -> AdvantageInputs:
  rewards, _ = penalised_rewards(SCORES, KL, jnp.zeros_like(KL), MASK, kl_coef=kl_coef)
  values = jnp.linspace(0.0, 1.0, 16).reshape(4, 4)
  return AdvantageInputs(rewards, SCORES, values, MASK, jnp.float32(0.5), jnp.array([1.0, 1.0, 0.0, 0.0]))


def test_every_estimator_gives_per_token_advantages_zero_off_the_response():
  params = AdvantageParams(group_size=2)
  for name, estimator in ADVANTAGES.items():
    out = jax.jit(estimator.fn, static_argnums=1)(inputs(), params)
    assert out.advantages.shape == out.returns.shape == MASK.shape, name
    assert np.all(np.asarray(out.advantages)[np.asarray(MASK) == 0] == 0), name
    assert np.all(np.isfinite(np.asarray(out.advantages))), name
  assert [n for n, e in ADVANTAGES.items() if e.needs_critic] == ["gae"]
  assert [n for n, e in ADVANTAGES.items() if e.needs_greedy] == ["remax"]


def test_gae_is_the_whitened_recursion_and_sequence_estimators_spread_their_value():
  x = inputs()
  advantages, returns = gae_lib.generalized_advantage_estimation(x.rewards, x.values, MASK, 1.0, 0.95)
  out = ADVANTAGES["gae"].fn(x, AdvantageParams())
  np.testing.assert_allclose(out.advantages, ppo.whiten(advantages, MASK), rtol=1e-6)
  np.testing.assert_allclose(out.returns, returns, rtol=1e-6)
  rloo = ADVANTAGES["rloo"].fn(x, AdvantageParams(group_size=2))
  sequence = np.asarray(jnp.sum(x.rewards, axis=1))
  np.testing.assert_allclose(rloo.advantages[:, 0], reinforce.rloo_advantages(jnp.asarray(sequence), 2), rtol=1e-6)
  np.testing.assert_allclose(rloo.advantages[0, :3], [rloo.advantages[0, 0]] * 3)
  reinforce_out = ADVANTAGES["reinforce"].fn(x, AdvantageParams(baseline_decay=0.9))
  np.testing.assert_allclose(reinforce_out.advantages[:, 0], sequence - 0.5, rtol=1e-6)
  np.testing.assert_allclose(reinforce_out.baseline, 0.9 * 0.5 + 0.1 * sequence.mean(), rtol=1e-6)
  remax = ADVANTAGES["remax"].fn(x, AdvantageParams())
  np.testing.assert_allclose(remax.advantages[:, 0], sequence - [1.0, 1.0, 0.0, 0.0], rtol=1e-6)


def test_reinforce_pp_whitens_the_kl_penalised_return_to_come_over_the_whole_batch():
  x = inputs(kl_coef=0.5)
  # Response 0: r = (-0.05, 0.1, -0.15 + 1) -> G = (0.9, 0.95, 0.85); response 1: r = (-0.1, -0.05 + 0)
  # -> G = (-0.15, -0.05); response 3: r = -0.25 + 2 -> G = 1.75.
  returns = np.array([[0.9, 0.95, 0.85, 0], [-0.15, -0.05, 0, 0], [1.85, 1.85, 1.9, 1.95], [1.75, 0, 0, 0]])
  out = ADVANTAGES["reinforce_pp"].fn(x, AdvantageParams())
  np.testing.assert_allclose(out.returns, returns, rtol=1e-5, atol=1e-6)
  mean, var = masked_mean(returns, MASK), masked_var(returns, MASK)  # over all 10 tokens, not per response
  whitened = np.where(MASK > 0, (returns - mean) / np.sqrt(var + 1e-8), 0)
  np.testing.assert_allclose(out.advantages, whitened, rtol=1e-4)
  np.testing.assert_allclose(masked_mean(out.advantages, MASK), 0.0, atol=1e-6)


def test_reinforce_pp_baseline_first_subtracts_each_prompts_mean_score():
  x = inputs(kl_coef=0.0)
  # Group means 0.5 and 2: centred scores 0.5, -0.5, 0, 0 at the last tokens, then whitened.
  centred = np.array([[0.5, 0.5, 0.5, 0], [-0.5, -0.5, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
  out = ADVANTAGES["reinforce_pp_baseline"].fn(x, AdvantageParams(group_size=2))
  np.testing.assert_allclose(out.returns, centred, atol=1e-6)
  expected = (centred - masked_mean(centred, MASK)) / np.sqrt(masked_var(centred, MASK) + 1e-8)
  np.testing.assert_allclose(out.advantages, np.where(MASK > 0, expected, 0), rtol=1e-4, atol=1e-6)
