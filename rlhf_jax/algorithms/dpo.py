"""Preference losses on sequence log-probabilities (direct preference optimisation and kin).

Every member maps `PreferenceInputs` (per pair [batch]: the policy's and the frozen reference's
summed response log-probs of the chosen and rejected responses, and their lengths) and
`PreferenceParams` to per-pair losses [batch]. With the log-ratio margin
h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)) and l(z) = -log sigmoid(z):

  sigmoid       DPO (Rafailov et al. 2023): l(beta h)
  conservative  cDPO (Mitchell 2023): (1 - eps) l(beta h) + eps l(-beta h), labels flipped w.p. eps
  robust        rDPO (Chowdhury et al. 2024): [(1 - eps) l(beta h) - eps l(-beta h)] / (1 - 2 eps),
                an unbiased loss under label-flip rate eps
  ipo           IPO (Azar et al. 2023): (h - 1 / (2 beta))^2; with length_normalise, h of
                per-token mean log-ratios
  hinge         SLiC (Zhao et al. 2023): max(0, 1 - beta h)
  simpo         SimPO (Meng et al. 2024), reference-free: l(beta (log pi(y_w) / |y_w|
                - log pi(y_l) / |y_l|) - gamma)

`PREFERENCE_LOSSES` is the only place naming them, each with whether it needs the reference
(a reference-free loss runs no reference forward pass).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from rlhf_jax import registry


class PreferenceInputs(NamedTuple):
  policy_chosen: jax.Array
  policy_rejected: jax.Array
  ref_chosen: jax.Array  # 0 for a reference-free loss
  ref_rejected: jax.Array
  chosen_length: jax.Array  # response tokens
  rejected_length: jax.Array


class PreferenceParams(NamedTuple):
  beta: float = 0.1
  label_smoothing: float = 0.0  # eps of cdpo and robust
  gamma: float = 1.0  # SimPO's target margin
  length_normalise: bool = False  # IPO on per-token mean log-ratios


class PreferenceLoss(NamedTuple):
  fn: Callable
  needs_reference: bool = True


def logratio_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
  """h per pair: how much more the policy prefers the chosen response than the reference does."""
  return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


def _margin(x: PreferenceInputs) -> jax.Array:
  return logratio_margin(x.policy_chosen, x.policy_rejected, x.ref_chosen, x.ref_rejected)


def _per_token(logps, length):
  return logps / jnp.maximum(length, 1.0)


def sigmoid(x: PreferenceInputs, hp: PreferenceParams) -> jax.Array:
  return -jax.nn.log_sigmoid(hp.beta * _margin(x))


def conservative(x: PreferenceInputs, hp: PreferenceParams) -> jax.Array:
  z, eps = hp.beta * _margin(x), hp.label_smoothing
  return -(1.0 - eps) * jax.nn.log_sigmoid(z) - eps * jax.nn.log_sigmoid(-z)


def robust(x: PreferenceInputs, hp: PreferenceParams) -> jax.Array:
  z, eps = hp.beta * _margin(x), hp.label_smoothing
  return (-(1.0 - eps) * jax.nn.log_sigmoid(z) + eps * jax.nn.log_sigmoid(-z)) / (1.0 - 2.0 * eps)


def ipo(x: PreferenceInputs, hp: PreferenceParams) -> jax.Array:
  h = _margin(x)
  if hp.length_normalise:
    h = (_per_token(x.policy_chosen - x.ref_chosen, x.chosen_length)
         - _per_token(x.policy_rejected - x.ref_rejected, x.rejected_length))
  return jnp.square(h - 1.0 / (2.0 * hp.beta))


def hinge(x: PreferenceInputs, hp: PreferenceParams) -> jax.Array:
  return jax.nn.relu(1.0 - hp.beta * _margin(x))


def simpo(x: PreferenceInputs, hp: PreferenceParams) -> jax.Array:
  margin = _per_token(x.policy_chosen, x.chosen_length) - _per_token(x.policy_rejected, x.rejected_length)
  return -jax.nn.log_sigmoid(hp.beta * margin - hp.gamma)


PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {
    "sigmoid": PreferenceLoss(sigmoid),
    "conservative": PreferenceLoss(conservative),
    "robust": PreferenceLoss(robust),
    "ipo": PreferenceLoss(ipo),
    "hinge": PreferenceLoss(hinge),
    "simpo": PreferenceLoss(simpo, needs_reference=False),
}


def register(name: str, fn: Callable, *, needs_reference: bool = True) -> None:
  """Adds a preference loss `fn(PreferenceInputs, PreferenceParams) -> per-pair losses [batch]`."""
  registry.add(PREFERENCE_LOSSES, "preference loss", name, PreferenceLoss(fn, needs_reference))


def preference_losses(x: PreferenceInputs, kind: str, hp: PreferenceParams) -> jax.Array:
  """Per-pair losses [batch] of the registered loss `kind`."""
  return PREFERENCE_LOSSES[kind].fn(x, hp)
