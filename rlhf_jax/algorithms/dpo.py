"""Direct preference optimisation losses on sequence log-probabilities (Rafailov et al. 2023).

Inputs are per-pair sums of response log-probs [batch] under the policy and the frozen
reference; h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)) is the policy's
implicit reward margin divided by beta.
  sigmoid (DPO):       -log sigmoid(beta h)
  conservative (cDPO): -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h), labels flipped
                       with probability eps (Mitchell 2023)
  ipo (Azar et al. 2023): (h - 1 / (2 beta))^2, a squared loss that keeps h finite even on
                       deterministic preferences
"""

import jax
import jax.numpy as jnp

LOSSES = ("sigmoid", "conservative", "ipo")


def logratio_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
  """h per pair: how much more the policy prefers the chosen response than the reference does."""
  return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


def preference_losses(h: jax.Array, beta: float, kind: str = "sigmoid", label_smoothing: float = 0.0) -> jax.Array:
  """Per-pair losses [batch] of `kind` (LOSSES) for margins `h`."""
  if kind == "sigmoid":
    return -jax.nn.log_sigmoid(beta * h)
  if kind == "conservative":
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * h) - label_smoothing * jax.nn.log_sigmoid(-beta * h)
  if kind == "ipo":
    return jnp.square(h - 1.0 / (2.0 * beta))
  raise ValueError(f"unknown DPO loss {kind!r}: one of {LOSSES}")


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta) -> jax.Array:
  """The mean sigmoid-DPO loss over the batch."""
  h = logratio_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
  return jnp.mean(preference_losses(h, beta, "sigmoid"))


def ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta) -> jax.Array:
  """The mean IPO loss over the batch."""
  h = logratio_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
  return jnp.mean(preference_losses(h, beta, "ipo"))
