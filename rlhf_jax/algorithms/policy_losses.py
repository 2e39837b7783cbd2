"""Policy losses: per-token surrogate losses of the current policy against the rollout's.

Every member has one signature, `(logprobs, old_logprobs, advantages, mask, hp) -> (loss,
stats)`, all [n, t]: `loss` the per-token loss to aggregate (see `aggregation`), `stats` the
per-token `ratio` and `clipped` indicator behind the metrics. Notation: r = pi / pi_old per
token, A the advantage, eps_low / eps_high the clip range (equal for PPO; DAPO's clip-higher
takes 0.2 / 0.28), sg the stop-gradient.

  clip       PPO (Schulman et al. 2017): -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)
  dual_clip  Ye et al. 2020: for A < 0 the objective is also bounded below by c A (c = 3),
             so a token with a huge ratio cannot push the loss without limit
  gspo       Zheng et al. 2025: one ratio per response, s_i = exp(mean_t log r_{i,t}), clipped
             at a small eps (3e-4 / 4e-4): -min(s A, clip(s) A). In the token form (value s_i,
             gradient s_i grad log pi_t), which equals GSPO for sequence-level advantages
  cispo      MiniMax 2025: -sg(clip(r, 1 - eps_low, 1 + eps_high)) A log pi: the weight is
             clipped and detached, so every token keeps a gradient

Padding is masked before every exp: the rollout's log-probs there may be a sentinel (-inf,
-1e9), and exp of it times 0 would make NaN gradients. Masked tokens get loss 0 and gradient 0.
Every log-ratio is clamped to +-20 before its exp, as verl, OpenRLHF and Tunix do: a token
whose ratio would overflow float32 (log r > 88) gets a finite loss and no gradient, instead of
a NaN gradient that makes the guard refuse the whole update.
`POLICY_LOSSES` is the only place naming the members.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from rlhf_jax import registry

from rlhf_jax.algorithms.masked import masked_sum
from rlhf_jax.algorithms.ppo import clipped_objective


LOG_RATIO_CLAMP = 20.0


def clamped_ratio(log_ratio):
  """exp of the log-ratio clamped to +-LOG_RATIO_CLAMP (gradient 0 beyond it)."""
  return jnp.exp(jnp.clip(log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


class PolicyLossParams(NamedTuple):
  clip_eps_low: float = 0.2
  clip_eps_high: float = 0.2
  dual_clip: float = 3.0  # c of dual-clip PPO


def _masked_inputs(logprobs, old_logprobs, advantages, mask):
  """(valid, logprobs, log-ratio, advantages), each 0 off the mask: nothing non-finite survives."""
  valid = mask > 0
  logprobs = jnp.where(valid, jnp.asarray(logprobs, jnp.float32), 0.0)
  old_logprobs = jnp.where(valid, jnp.asarray(old_logprobs, jnp.float32), 0.0)
  return valid, logprobs, logprobs - old_logprobs, jnp.where(valid, advantages, 0.0)


def _clipped_objective(ratio, advantages, hp: PolicyLossParams):
  """min(r A, clip(r) A) and where its clipped side is strictly the minimum (no gradient there)."""
  objective = clipped_objective(ratio, advantages, hp.clip_eps_low, hp.clip_eps_high)
  return objective, objective < ratio * advantages


def clip(logprobs, old_logprobs, advantages, mask, hp: PolicyLossParams):
  valid, _, log_ratio, advantages = _masked_inputs(logprobs, old_logprobs, advantages, mask)
  ratio = clamped_ratio(log_ratio)
  objective, clipped = _clipped_objective(ratio, advantages, hp)
  return jnp.where(valid, -objective, 0.0), {"ratio": ratio, "clipped": clipped & valid}


def dual_clip(logprobs, old_logprobs, advantages, mask, hp: PolicyLossParams):
  valid, _, log_ratio, advantages = _masked_inputs(logprobs, old_logprobs, advantages, mask)
  ratio = clamped_ratio(log_ratio)
  objective, clipped = _clipped_objective(ratio, advantages, hp)
  floor = hp.dual_clip * advantages
  lower_bounded = (advantages < 0) & (objective < floor)
  objective = jnp.where(lower_bounded, floor, objective)
  return jnp.where(valid, -objective, 0.0), {"ratio": ratio, "clipped": (clipped | lower_bounded) & valid}


def gspo(logprobs, old_logprobs, advantages, mask, hp: PolicyLossParams):
  valid, logprobs, log_ratio, advantages = _masked_inputs(logprobs, old_logprobs, advantages, mask)
  lengths = jnp.maximum(jnp.sum(valid, axis=1, keepdims=True), 1)
  sequence_log_ratio = jnp.sum(log_ratio, axis=1, keepdims=True) / lengths
  # Value s_i on every token; gradient s_i * grad log pi(token).
  sequence_log_ratio = jnp.clip(sequence_log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
  log_s = logprobs - jax.lax.stop_gradient(logprobs) + jax.lax.stop_gradient(sequence_log_ratio)
  ratio = jnp.exp(jnp.where(valid, log_s, 0.0))
  objective, clipped = _clipped_objective(ratio, advantages, hp)
  return jnp.where(valid, -objective, 0.0), {"ratio": ratio, "clipped": clipped & valid}


def cispo(logprobs, old_logprobs, advantages, mask, hp: PolicyLossParams):
  valid, logprobs, log_ratio, advantages = _masked_inputs(logprobs, old_logprobs, advantages, mask)
  ratio = clamped_ratio(log_ratio)
  weight = jnp.clip(ratio, 1.0 - hp.clip_eps_low, 1.0 + hp.clip_eps_high)
  loss = -jax.lax.stop_gradient(weight) * advantages * logprobs
  return jnp.where(valid, loss, 0.0), {"ratio": ratio, "clipped": (weight != ratio) & valid}


POLICY_LOSSES: dict[str, Callable] = {"clip": clip, "dual_clip": dual_clip, "gspo": gspo, "cispo": cispo}


def register(name: str, fn: Callable) -> None:
  """Adds a policy loss `fn(logprobs, old_logprobs, advantages, mask, hp) -> (per-token loss,
  {"ratio", "clipped"})` (a plugin's, say)."""
  registry.add(POLICY_LOSSES, "policy loss", name, fn)


def surrogate_loss(name: str, logprobs, old_logprobs, advantages, weights, metric_weights, hp: PolicyLossParams):
  """(loss, metrics) of policy loss `name` aggregated by `weights` (see `aggregation`).

  The metrics are weighted by `metric_weights` (token means, so they are fractions and means
  whatever the aggregation): `clip_fraction`, `ratio`, `approx_kl` ((log r)^2 / 2), and
  `max_ratio_deviation`, the largest |r - 1| (0 up to float error at the first update of an
  iteration, where the rollout's log-probs come from the same params).
  """
  mask = metric_weights > 0
  per_token, stats = POLICY_LOSSES[name](logprobs, old_logprobs, advantages, mask, hp)
  log_ratio = jnp.log(jnp.where(mask, stats["ratio"], 1.0))
  metrics = {"clip_fraction": masked_sum(stats["clipped"].astype(jnp.float32), metric_weights),
             "ratio": masked_sum(stats["ratio"], metric_weights),
             "approx_kl": masked_sum(0.5 * jnp.square(log_ratio), metric_weights),
             "max_ratio_deviation": jnp.max(jnp.where(mask, jnp.abs(stats["ratio"] - 1.0), 0.0))}
  return masked_sum(per_token, weights), metrics
