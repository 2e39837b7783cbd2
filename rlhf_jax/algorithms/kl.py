"""The KL penalty to the reference policy: per-token estimators, KL-shaped rewards, and the adaptive
KL coefficient of Ziegler et al. 2019, all as pure functions.

With tokens sampled from pi, d = log pi(y_t) - log pi_ref(y_t) and u = -d, the estimators of
KL(pi || pi_ref) per token are (Schulman, "Approximating KL divergence", 2020):
  k1 = d                     unbiased, high variance, can be negative
  k2 = d^2 / 2               biased, low variance, >= 0
  k3 = exp(u) - 1 - u        unbiased, low variance, >= 0 (0 iff the log-probs agree)
  abs = |d|                  biased, >= 0
"""

import flax.struct
import jax
import jax.numpy as jnp

from rlhf_jax.algorithms.masked import last_token, masked_mean, masked_sum

__all__ = ["KL_KINDS", "KLControllerState", "init_kl_controller", "kl_penalty", "masked_mean",
           "masked_sum", "penalised_rewards", "update_kl_controller"]

KL_KINDS = ("k1", "k2", "k3", "abs")


def kl_penalty(logprobs: jax.Array, ref_logprobs: jax.Array, kind: str) -> jax.Array:
  """Per-token KL estimate of kind `kind` (a static string in KL_KINDS), shape of the inputs."""
  d = jnp.asarray(logprobs, jnp.float32) - jnp.asarray(ref_logprobs, jnp.float32)
  if kind == "k1":
    return d
  if kind == "k2":
    return 0.5 * jnp.square(d)
  if kind == "k3":
    # expm1 keeps precision when the policies are close, where exp(u) - 1 would cancel.
    return jnp.expm1(-d) + d
  if kind == "abs":
    return jnp.abs(d)
  raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_KINDS}")


def penalised_rewards(scores: jax.Array, logprobs: jax.Array, ref_logprobs: jax.Array, mask: jax.Array,
                      *, kl_coef, kind: str = "k1"):
  """Per-token rewards: the KL penalty on every response token, the RM score on the last one.

    r_t = -kl_coef * kl_t * m_t + score * [t is the last token with m_t = 1]

  Args:
    scores: [batch] sequence scores from the reward model.
    logprobs, ref_logprobs, mask: [batch, time]; mask is one contiguous block of ones per row.
    kl_coef: Python float or traced scalar (e.g. KLControllerState.coef). kind: see kl_penalty.
  Returns:
    (rewards [batch, time], metrics) with `kl` (mean per-row summed estimate), `score` and
    `non_score_reward` (mean per-row summed penalty). A row with an empty mask gets no reward.
  """
  mask, scores = jnp.asarray(mask, jnp.float32), jnp.asarray(scores, jnp.float32)
  per_token = kl_penalty(logprobs, ref_logprobs, kind)
  penalty = jnp.where(mask > 0, -kl_coef * per_token, 0.0)
  rewards = penalty + scores[:, None] * last_token(mask)
  metrics = {"kl": jnp.mean(masked_sum(per_token, mask, axis=-1)), "score": jnp.mean(scores),
             "non_score_reward": jnp.mean(jnp.sum(penalty, axis=-1))}
  return rewards, metrics


@flax.struct.dataclass
class KLControllerState:
  """The KL coefficient beta, carried through the training loop like any other state."""
  coef: jax.Array


def init_kl_controller(init_coef) -> KLControllerState:
  return KLControllerState(coef=jnp.asarray(init_coef, jnp.float32))


def update_kl_controller(state: KLControllerState, observed_kl, n_steps, *, target, horizon,
                         adaptive: bool) -> KLControllerState:
  """Ziegler et al.'s proportional controller towards a target KL.

    error = clip(KL / target - 1, -0.2, 0.2)
    beta <- beta * (1 + error * n_steps / horizon)

  Args:
    observed_kl: the mean per-sequence KL of the last batch. n_steps: samples (episodes) in it.
    target, horizon: controller constants (published: target 6 nats, horizon 10000 episodes).
    adaptive: static; False keeps beta fixed.
  """
  if not adaptive:
    return state
  # The clip bounds the change per update, so one unlucky batch cannot swing beta by much.
  error = jnp.clip(observed_kl / target - 1.0, -0.2, 0.2)
  return state.replace(coef=state.coef * (1.0 + error * n_steps / horizon))
