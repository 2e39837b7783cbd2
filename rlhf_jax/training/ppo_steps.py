"""One PPO iteration as one pure function, rollout to last update (PureJaxRL-style).

Sample responses -> recompute log-probs at the sampling temperature (policy and frozen
reference) -> score (any `score_fn`: the reward model, or a programmatic reward) with a
fixed penalty for responses without EOS -> per-token KL penalty -> values -> GAE (reverse
scan) -> whitened advantages -> `epochs` x `minibatches` clipped updates of policy and critic
(nested `lax.scan`, each minibatch optionally over `accum_steps` microbatches) -> KL
controller update. Jit it once; nothing leaves the device.

The critic is a separate model (`critic`, with its own params and optimizer) or, with
`critic=None`, a value head on the policy backbone: one forward pass gives logits and values,
and the value loss trains the shared trunk too.
"""

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlhf_jax.algorithms import gae, kl, ppo
from rlhf_jax.algorithms.masked import masked_mean
from rlhf_jax.models.sampling import SamplingParams, sample
from rlhf_jax.training.rl_state import RLState
from rlhf_jax.training.steps import accumulate_gradients


@dataclasses.dataclass(frozen=True)
class PPOConfig:
  """Static hyperparameters; defaults from Huang et al. 2024 ("N+ implementation details")."""
  max_new_tokens: int
  eos_id: int
  pad_id: int
  temperature: float = 0.7
  epochs: int = 4
  minibatches: int = 1
  accum_steps: int = 1  # microbatches per minibatch (gradient accumulation)
  clip_eps: float = 0.2
  value_clip: float = 0.2
  vf_coef: float = 0.1
  ent_coef: float = 0.0
  gamma: float = 1.0
  lam: float = 0.95
  kl_kind: str = "k1"
  kl_target: float = 6.0
  kl_horizon: float = 10000.0
  adaptive_kl: bool = False
  no_eos_penalty: float = -1.0
  penalise_no_eos: bool = True


class Rollout(NamedTuple):
  tokens: jax.Array  # [batch, prompt + new] prompt then response
  mask: jax.Array  # [batch, prompt + new] real tokens
  logprobs: jax.Array  # [batch, new] at sampling time (the "old" policy)
  values: jax.Array  # [batch, new]
  advantages: jax.Array  # [batch, new] whitened
  returns: jax.Array  # [batch, new]


def response_logits(model, params, tokens, mask, prompt_len: int, temperature: float):
  """Logits predicting each response token, divided by the sampling temperature."""
  logits = model.apply({"params": params}, tokens, mask).logits
  return logits[:, prompt_len - 1:-1] / temperature


def response_logprobs(model, params, tokens, mask, prompt_len: int, temperature: float):
  return token_logprobs(response_logits(model, params, tokens, mask, prompt_len, temperature), tokens[:, prompt_len:])


def response_values(model, params, tokens, mask, prompt_len: int):
  """V(s_t) for each response token t: the value head at the position before it."""
  out = model.apply({"params": params}, tokens, mask, with_logits=False)
  return out.scalars["value"][:, prompt_len - 1:-1]


def logits_and_values(params, tokens, mask, prompt_len: int, *, policy, critic, temperature: float):
  """Response logits (divided by the temperature) and values; one pass when the critic is shared."""
  policy_params, value_params = params
  out = policy.apply({"params": policy_params}, tokens, mask)
  logits = out.logits[:, prompt_len - 1:-1] / temperature
  if critic is None:  # the value head on the policy backbone
    return logits, out.scalars["value"][:, prompt_len - 1:-1]
  return logits, response_values(critic, value_params, tokens, mask, prompt_len)


def token_logprobs(logits, tokens):
  return jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]


def rollout(state: RLState, prompts, prompt_mask, rng, *, policy, critic, score_fn: Callable, cfg: PPOConfig):
  """Samples, scores and computes advantages. Returns (Rollout, metrics)."""
  p = prompts.shape[1]
  out = sample(policy, state.policy, prompts, prompt_mask, rng, SamplingParams.make(cfg.temperature),
               max_new_tokens=cfg.max_new_tokens, eos_id=cfg.eos_id, pad_id=cfg.pad_id)
  tokens = jnp.concatenate([prompts, out.tokens], axis=1)
  mask = jnp.concatenate([prompt_mask.astype(jnp.int32), out.mask], axis=1)
  logits, values = logits_and_values((state.policy, state.value), tokens, mask, p, policy=policy, critic=critic,
                                     temperature=cfg.temperature)
  logprobs = token_logprobs(logits, out.tokens)
  ref_logprobs = response_logprobs(policy, state.ref, tokens, mask, p, cfg.temperature)
  ended = jnp.any((out.tokens == cfg.eos_id) & (out.mask > 0), axis=1)
  scores = score_fn(state, tokens, mask, out)
  if cfg.penalise_no_eos:
    scores = jnp.where(ended, scores, cfg.no_eos_penalty)
  rewards, kl_metrics = kl.penalised_rewards(scores, logprobs, ref_logprobs, out.mask, kl_coef=state.kl.coef,
                                             kind=cfg.kl_kind)
  advantages, returns = gae.generalized_advantage_estimation(rewards, values, out.mask, cfg.gamma, cfg.lam)
  advantages = ppo.whiten(advantages, out.mask)
  metrics = {**kl_metrics, "kl_coef": state.kl.coef, "response_length": jnp.mean(jnp.sum(out.mask, axis=1)),
             "no_eos_fraction": 1.0 - jnp.mean(ended), "explained_variance": ppo.explained_variance(
                 values, returns, out.mask)}
  return Rollout(tokens, mask, logprobs, values, advantages, returns), metrics


def ppo_loss(params, batch: Rollout, normalizer, *, policy, critic, cfg: PPOConfig, prompt_len: int):
  """The minibatch loss and metrics, weighted by (its response tokens / `normalizer`).

  Each term is a token mean over this batch; the weight makes microbatch sums equal the
  minibatch's token means, so gradient accumulation is exact.
  """
  response_mask = batch.mask[:, prompt_len:]
  logits, values = logits_and_values(params, batch.tokens, batch.mask, prompt_len, policy=policy, critic=critic,
                                     temperature=cfg.temperature)
  logprobs = token_logprobs(logits, batch.tokens[:, prompt_len:])
  pg_loss, pg_metrics = ppo.clipped_surrogate_loss(logprobs, batch.logprobs, batch.advantages, response_mask,
                                                   clip_eps=cfg.clip_eps)
  entropy = masked_mean(ppo.entropy_from_logits(logits), response_mask)
  v_loss, v_metrics = ppo.clipped_value_loss(values, batch.values, batch.returns, response_mask, clip=cfg.value_clip)
  loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
  weight = jnp.sum(response_mask) / normalizer
  metrics = {**pg_metrics, **v_metrics, "policy_loss": pg_loss, "entropy": entropy}
  return weight * loss, jax.tree.map(lambda m: weight * m, metrics)


def apply_updates(tx, grads, opt_state, params):
  if tx is None:  # no separate critic
    return params, opt_state
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def ppo_iteration(state: RLState, prompts, prompt_mask, *, policy, critic, policy_tx, value_tx,
                  score_fn: Callable, cfg: PPOConfig):
  """One PPO iteration: (state, prompts) -> (state, metrics). Frozen params pass through.

  With a shared critic (`critic` and `value_tx` None) `state.value` is None and `policy_tx`
  updates the policy params, value head included.
  """
  rng, sample_rng, shuffle_rng = jax.random.split(state.rng, 3)
  batch, metrics = rollout(state, prompts, prompt_mask, sample_rng, policy=policy, critic=critic,
                           score_fn=score_fn, cfg=cfg)
  p, n = prompts.shape[1], prompts.shape[0]
  loss_fn = functools.partial(ppo_loss, policy=policy, critic=critic, cfg=cfg, prompt_len=p)

  def update(carry, minibatch):
    params, (policy_opt, value_opt) = carry
    normalizer = jnp.maximum(jnp.sum(minibatch.mask[:, p:]), 1).astype(jnp.float32)
    (policy_grads, value_grads), m = accumulate_gradients(loss_fn, params, minibatch, cfg.accum_steps, normalizer)
    policy_params, policy_opt = apply_updates(policy_tx, policy_grads, policy_opt, params[0])
    value_params, value_opt = apply_updates(value_tx, value_grads, value_opt, params[1])
    return ((policy_params, value_params), (policy_opt, value_opt)), m

  def epoch(carry, key):
    order = jax.random.permutation(key, n).reshape(cfg.minibatches, -1)
    minibatches = jax.tree.map(lambda x: x[order], batch)
    return jax.lax.scan(update, carry, minibatches)

  carry = ((state.policy, state.value), (state.policy_opt, state.value_opt))
  ((policy_params, value_params), (policy_opt, value_opt)), losses = jax.lax.scan(
      epoch, carry, jax.random.split(shuffle_rng, cfg.epochs))
  new_kl = kl.update_kl_controller(state.kl, metrics["kl"], n, target=cfg.kl_target, horizon=cfg.kl_horizon,
                                   adaptive=cfg.adaptive_kl)
  metrics.update(jax.tree.map(jnp.mean, {k: v for k, v in losses.items() if k != "loss"}))
  state = state.replace(step=state.step + 1, policy=policy_params, policy_opt=policy_opt, value=value_params,
                        value_opt=value_opt, kl=new_kl, rng=rng)
  return state, metrics
