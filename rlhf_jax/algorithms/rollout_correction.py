"""The sampler/trainer mismatch, measured every iteration and corrected on request.

The sampler's log-probs (mu: the rollout engine's) and the trainer's recomputed ones (pi_old)
differ by float error with our own engine (one model does both), by more with an external
engine (vLLM's kernels and precision) or a stale one (off-policy); an MoE policy's also when
the two passes route a token to other experts. `mismatch_metrics` logs the gap every iteration
(`routing_metrics` the routing agreement); `rl.rollout_correction` turns the per-token ratio
w = pi_old / mu into a weight on each token's policy loss, held constant (decoupled, as verl's
rollout correction: PPO's ratio stays against the trainer's own pi_old, the weight multiplies):

  none            1
  token_tis       min(w_t, cap): token-level truncated IS (Yao et al. 2025)
  sequence_tis    min(prod_t w_t, cap) on every token of the sequence
  token_reject    1 where lo <= w_t <= hi, else 0: tokens the engines disagree on are dropped
  sequence_reject 1 where lo <= the sequence's geometric-mean w <= hi, else 0 (the whole
                  sequence; the geometric mean, as a product over hundreds of tokens is
                  meaningless to bound)

Each correction is a pure function of the masked log-ratio [batch, time], the mask and its
parameters; padding gets weight 1. `ROLLOUT_CORRECTIONS` is the only place naming them.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from rlhf_jax.algorithms.masked import masked_mean, masked_sum


class CorrectionParams(NamedTuple):
  cap: float = 2.0  # the truncated corrections' upper bound
  low: float = 0.5  # the rejections' bounds on the ratio
  high: float = 2.0


def none(log_w, mask, hp: CorrectionParams):
  del mask, hp
  return jnp.ones_like(log_w)


def token_tis(log_w, mask, hp: CorrectionParams):
  del mask
  return jnp.minimum(jnp.exp(log_w), hp.cap)


def sequence_tis(log_w, mask, hp: CorrectionParams):
  total = jnp.sum(jnp.where(mask > 0, log_w, 0.0), axis=1, keepdims=True)
  return jnp.broadcast_to(jnp.exp(jnp.minimum(total, jnp.log(hp.cap))), log_w.shape)


def token_reject(log_w, mask, hp: CorrectionParams):
  del mask
  w = jnp.exp(log_w)
  return ((w >= hp.low) & (w <= hp.high)).astype(jnp.float32)


def sequence_reject(log_w, mask, hp: CorrectionParams):
  geometric = jnp.exp(masked_mean(log_w, mask, axis=1))[:, None]
  return jnp.broadcast_to(((geometric >= hp.low) & (geometric <= hp.high)).astype(jnp.float32), log_w.shape)


ROLLOUT_CORRECTIONS: dict[str, Callable] = {"none": none, "token_tis": token_tis, "sequence_tis": sequence_tis,
                                            "token_reject": token_reject, "sequence_reject": sequence_reject}


def correction_weights(kind: str, trainer_logprobs, sampler_logprobs, mask, hp: CorrectionParams):
  """(weights [batch, time] without gradient, 1 on padding; the fraction of tokens they change)."""
  log_w = jax.lax.stop_gradient(jnp.where(mask > 0, trainer_logprobs - sampler_logprobs, 0.0))
  weights = jnp.where(mask > 0, ROLLOUT_CORRECTIONS[kind](log_w, mask, hp), 1.0)
  return weights, masked_mean((weights != jnp.exp(log_w)).astype(jnp.float32), mask)


def mismatch_metrics(trainer_logprobs, sampler_logprobs, mask) -> dict:
  """rollout/: the mean and max |log-prob gap| over the sampled tokens, the sampler-to-trainer
  KL (k3, E_mu[w - 1 - log w], >= 0 per token) and the importance weights' effective sample
  size over the tokens, (sum w)^2 / (n sum w^2), 1 when the engines agree."""
  real = mask > 0
  log_w = jax.lax.stop_gradient(jnp.where(real, trainer_logprobs - sampler_logprobs, 0.0))
  w = jnp.exp(log_w)
  ess = jnp.square(masked_sum(w, mask)) / jnp.maximum(jnp.sum(real) * masked_sum(jnp.square(w), mask), 1e-30)
  return {"rollout/logprob_gap_mean": masked_mean(jnp.abs(log_w), mask),
          "rollout/logprob_gap_max": jnp.max(jnp.abs(log_w)),
          "rollout/kl": masked_mean(w - 1.0 - log_w, mask), "rollout/ess": ess}


def routing_metrics(agreement, mask) -> dict:
  """rollout/router_agreement: an MoE policy's routing check beside the log-prob one, the share
  of the response tokens' (layer, choice) assignments where the trainer's live router picks an
  expert the sampler picked (`agreement` [batch, time], moe.routing_agreement; None: a dense
  policy, or a sampler that records no experts: nothing). Under router replay it is the live
  router's agreement, what the trainer would have routed: the replayed pass agrees by construction."""
  return {} if agreement is None else {"rollout/router_agreement": masked_mean(agreement, mask)}
