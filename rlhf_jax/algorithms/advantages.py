"""Advantage estimators: from a rollout's rewards (and values) to per-token advantages.

Every member has one signature, `(AdvantageInputs, AdvantageParams) -> Advantages`, and
declares what the iteration must give it (a critic's values, a greedy sample's return, groups
of k >= 2 samples per prompt). Grouped estimators take the k samples of a prompt next to each
other (what `jnp.repeat(prompts, k, axis=0)` gives). `ADVANTAGES` is the only place naming them.

  gae                    PPO: GAE (Schulman et al. 2016) on the critic's values, whitened
  reinforce              R - b, b a moving average of earlier batches' returns (Williams 1992)
  rloo                   R_i - mean of the other k - 1 returns (Ahmadian et al. 2024)
  grpo                   (R_i - group mean) / group std, the std switchable (Shao et al. 2024;
                         Dr. GRPO drops it, Liu et al. 2025)
  remax                  R - the greedy response's return (Li et al. 2023)
  reinforce_pp           REINFORCE++ (Hu 2025): the token-level return G_t = sum_{s >= t} r_s of
                         the KL-penalised rewards, whitened over every token of the global batch
  reinforce_pp_baseline  the same after subtracting each prompt's group-mean score

The sequence-level ones spread their advantage over the response's tokens.
"""

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from rlhf_jax import registry
from rlhf_jax.algorithms import gae as gae_lib
from rlhf_jax.algorithms import ppo, reinforce
from rlhf_jax.algorithms.masked import last_token


class AdvantageInputs(NamedTuple):
  rewards: jax.Array  # [n, t] -kl_coef * kl_t on every response token, the score added at the last
  scores: jax.Array  # [n] the sequence scores (no-EOS penalty applied, no KL)
  values: jax.Array  # [n, t] the critic's values (0 without a critic)
  mask: jax.Array  # [n, t] response tokens
  baseline: jax.Array  # scalar: REINFORCE's moving average of returns
  greedy_returns: Optional[jax.Array] = None  # [n] ReMax: the greedy response's return


class AdvantageParams(NamedTuple):
  group_size: int = 1  # k samples per prompt
  gamma: float = 1.0
  lam: float = 0.95
  baseline_decay: float = 0.9
  scale_by_std: bool = True


class Advantages(NamedTuple):
  advantages: jax.Array  # [n, t], 0 off the response
  returns: jax.Array  # [n, t] the critic's targets (GAE), else the return spread over the tokens
  baseline: jax.Array  # scalar, REINFORCE's updated moving average (the others pass it through)


class Estimator(NamedTuple):
  fn: Callable
  needs_critic: bool = False
  needs_greedy: bool = False
  min_group_size: int = 1


def _spread(per_response: jax.Array, mask: jax.Array) -> jax.Array:
  return jnp.where(mask > 0, per_response[:, None], 0.0)


def _returns(x: AdvantageInputs) -> jax.Array:
  """Each response's return [n]: score - kl_coef * sum_t kl_t (gamma 1)."""
  return jnp.sum(x.rewards, axis=1)


def _sequence_level(x: AdvantageInputs, per_response: jax.Array, baseline=None) -> Advantages:
  return Advantages(_spread(per_response, x.mask), _spread(_returns(x), x.mask),
                    x.baseline if baseline is None else baseline)


def gae(x: AdvantageInputs, hp: AdvantageParams) -> Advantages:
  advantages, returns = gae_lib.generalized_advantage_estimation(x.rewards, x.values, x.mask, hp.gamma, hp.lam)
  return Advantages(ppo.whiten(advantages, x.mask), returns, x.baseline)


def moving_average(x: AdvantageInputs, hp: AdvantageParams) -> Advantages:
  per_response, baseline = reinforce.moving_average_baseline(_returns(x), x.baseline, hp.baseline_decay)
  return _sequence_level(x, per_response, baseline)


def rloo(x: AdvantageInputs, hp: AdvantageParams) -> Advantages:
  return _sequence_level(x, reinforce.rloo_advantages(_returns(x), hp.group_size))


def grpo(x: AdvantageInputs, hp: AdvantageParams) -> Advantages:
  return _sequence_level(x, reinforce.grpo_advantages(_returns(x), hp.group_size, hp.scale_by_std))


def remax(x: AdvantageInputs, hp: AdvantageParams) -> Advantages:
  return _sequence_level(x, reinforce.remax_advantages(_returns(x), x.greedy_returns))


def reinforce_pp(x: AdvantageInputs, hp: AdvantageParams) -> Advantages:
  returns = reinforce.token_returns(x.rewards, x.mask, hp.gamma)
  return Advantages(ppo.whiten(returns, x.mask), returns, x.baseline)


def reinforce_pp_baseline(x: AdvantageInputs, hp: AdvantageParams) -> Advantages:
  group_mean = jnp.mean(x.scores.reshape(-1, hp.group_size), axis=1)
  last = last_token(x.mask)
  centred = x.rewards - jnp.repeat(group_mean, hp.group_size)[:, None] * last
  return reinforce_pp(x._replace(rewards=centred), hp)


ADVANTAGES: dict[str, Estimator] = {
    "gae": Estimator(gae, needs_critic=True),
    "reinforce": Estimator(moving_average),
    "rloo": Estimator(rloo, min_group_size=2),
    "grpo": Estimator(grpo, min_group_size=2),
    "remax": Estimator(remax, needs_greedy=True),
    "reinforce_pp": Estimator(reinforce_pp),
    "reinforce_pp_baseline": Estimator(reinforce_pp_baseline, min_group_size=2),
}


def register(name: str, fn: Callable, *, needs_critic: bool = False, needs_greedy: bool = False,
             min_group_size: int = 1) -> None:
  """Adds an estimator `fn(AdvantageInputs, AdvantageParams) -> Advantages` (a plugin's, say)."""
  registry.add(ADVANTAGES, "advantage estimator", name, Estimator(fn, needs_critic, needs_greedy, min_group_size))
