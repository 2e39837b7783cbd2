"""Reward-model losses: the Bradley-Terry pairwise loss, its metrics, and output normalisation.

P(y_w > y_l) = sigmoid(r_w - r_l) (Bradley-Terry; Stiennon et al. 2020, Ouyang et al. 2022), so the
negative log-likelihood of the labelled preference is -log sigmoid(r_w - r_l).
"""

import jax
import jax.numpy as jnp


def bradley_terry_loss(chosen_rewards: jax.Array, rejected_rewards: jax.Array, label=1.0) -> jax.Array:
  """mean_b -[l log sigmoid(r_w[b] - r_l[b]) + (1 - l) log sigmoid(r_l[b] - r_w[b])].

  Args:
    chosen_rewards, rejected_rewards: [batch] scalar rewards of the preferred and the other response.
    label: P(the chosen response is preferred), [batch] or a scalar: 1 is the hard label's plain
      negative log-likelihood; a judge model's probability is a soft label (RLAIF), the
      cross-entropy against it.
  Returns:
    The scalar loss. A difference of +2 gives 0.127, -2 gives log(1 + e^2) = 2.127 (label 1).
  """
  diff = jnp.asarray(chosen_rewards, jnp.float32) - jnp.asarray(rejected_rewards, jnp.float32)
  label = jnp.asarray(label, jnp.float32)
  # log_sigmoid stays finite for large negative differences where log(sigmoid(d)) underflows to -inf.
  return -jnp.mean(label * jax.nn.log_sigmoid(diff) + (1.0 - label) * jax.nn.log_sigmoid(-diff))


def preference_metrics(chosen_rewards: jax.Array, rejected_rewards: jax.Array) -> dict:
  """accuracy = mean[r_w > r_l] (ties count 1/2), margin = mean(r_w - r_l), and the loss."""
  diff = jnp.asarray(chosen_rewards, jnp.float32) - jnp.asarray(rejected_rewards, jnp.float32)
  # A tie is a coin flip: counting it 0.5 keeps a constant reward model at exactly chance accuracy.
  accuracy = jnp.mean((diff > 0) + 0.5 * (diff == 0))
  return {"accuracy": accuracy, "margin": jnp.mean(diff),
          "loss": bradley_terry_loss(chosen_rewards, rejected_rewards)}


def normalisation(rewards: jax.Array, *, eps: float = 1e-8):
  """(gain, bias) such that gain * r + bias has mean 0 and std 1 over `rewards`.

  gain = 1 / sqrt(Var[r] + eps), bias = -E[r] * gain (population variance). Ziegler et al. 2019
  normalise the RM this way on samples from the SFT policy before RL, so the KL coefficient means
  the same thing whatever scale the RM happened to learn. eps keeps a constant RM finite.
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  gain = jax.lax.rsqrt(jnp.var(rewards) + eps)
  return gain, -jnp.mean(rewards) * gain
