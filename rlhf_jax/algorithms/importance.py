"""Importance corrections for responses sampled by an older policy (off-policy RL).

With `rl.off_policy_steps = K >= 1` the responses an update trains on were sampled by the policy
of K iterations before (the behaviour policy, mu). A critic-free method's loss is taken at
ratio pi / pi_old with pi_old the policy at the update's start (the proximal policy, as in
decoupled PPO, Hilton et al. 2022), so each token's loss is weighted by w = pi_old / mu, held
constant (no gradient). PPO takes its ratio against mu itself and needs no weight.

  none  w = 1: the stale responses as if on-policy
  tis   min(w, cap): truncated importance sampling (Ionides 2008; Yao et al. 2025, cap ~2)
  clip  clip(w, 1 / cap, cap): truncated on both sides

Every correction is a pure function of [batch, time] log-probs and a mask; the log-ratio is
masked before the exp, so whatever the padding holds gives weight 1 there.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from rlhf_jax.algorithms.masked import masked_mean


def raw_weights(proximal_logprobs, behaviour_logprobs, mask) -> jax.Array:
  """w = pi_old / mu per token (1 on padding), without gradient."""
  log_w = jnp.where(mask > 0, proximal_logprobs - behaviour_logprobs, 0.0)
  return jax.lax.stop_gradient(jnp.exp(log_w))


def none(w, cap: float):
  del cap
  return jnp.ones_like(w)


def tis(w, cap: float):
  return jnp.minimum(w, cap)


def clip(w, cap: float):
  return jnp.clip(w, 1.0 / cap, cap)


IS_CORRECTIONS: dict[str, Callable] = {"none": none, "tis": tis, "clip": clip}


def importance_weights(kind: str, proximal_logprobs, behaviour_logprobs, mask, cap: float):
  """(weights [batch, time], metrics): the correction `kind` of w = pi_old / mu, and w's mean,
  max and the fraction of tokens the correction changed (over real tokens)."""
  w = raw_weights(proximal_logprobs, behaviour_logprobs, mask)
  corrected = IS_CORRECTIONS[kind](w, cap)
  real = mask > 0
  metrics = {"is_weight_mean": masked_mean(w, mask), "is_weight_max": jnp.max(jnp.where(real, w, 0.0)),
             "is_clipped_fraction": masked_mean((corrected != w).astype(jnp.float32), mask)}
  return jnp.where(real, corrected, 1.0), metrics
