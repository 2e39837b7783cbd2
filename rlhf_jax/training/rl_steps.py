"""One RL iteration as one pure function, rollout to last update (PureJaxRL-style).

PPO and the critic-free methods (REINFORCE with a moving-average baseline, RLOO, GRPO, ReMax)
share everything but the advantage estimator:

  sample `samples_per_prompt` responses per prompt -> recompute log-probs at the sampling
  temperature (policy and frozen reference) -> score (any `score_fn`: the reward model, or a
  programmatic reward) with a fixed penalty for responses without EOS -> per-token KL penalty
  in the reward (or, `kl_in_loss`, a k3 loss term) -> advantages: PPO's GAE (reverse scan) on
  the critic's values, whitened; or a sequence-level estimator from `algorithms/reinforce.py`
  spread over the response -> `epochs` x `minibatches` clipped-surrogate updates (nested
  `lax.scan`, each minibatch optionally over `accum_steps` microbatches) -> KL controller
  update. Jit it once; nothing leaves the device.

With one epoch and one minibatch the ratio is 1 at the update, so the clipped surrogate's
gradient is the plain policy gradient: that is REINFORCE's and RLOO's update.
PPO's critic is a separate model (`critic`, with its own params and optimizer) or, with
`critic=None` and a policy that has a value head, a head on the policy backbone: one forward
pass gives logits and values, and the value loss trains the shared trunk too.
"""

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlhf_jax.algorithms import gae, kl, ppo, reinforce
from rlhf_jax.algorithms.masked import masked_sum
from rlhf_jax.models.sampling import SamplingParams, sample
from rlhf_jax.training import guards
from rlhf_jax.training.rl_state import RLState
from rlhf_jax.training.steps import accumulate_gradients

ALGOS = ("ppo", "reinforce", "rloo", "grpo", "remax")
# What each algorithm takes for the fields a config leaves at 0 / "". The critic-free methods
# make one on-policy step per batch, as published (REINFORCE/RLOO: -A * sum_t log p; GRPO:
# per-response token means); RLOO and GRPO compare 4 samples per prompt.
ALGO_DEFAULTS = {
    "ppo": dict(samples_per_prompt=1, epochs=4, minibatches=2, loss_reduction="token"),
    "reinforce": dict(samples_per_prompt=1, epochs=1, minibatches=1, loss_reduction="sequence"),
    "rloo": dict(samples_per_prompt=4, epochs=1, minibatches=1, loss_reduction="sequence"),
    "grpo": dict(samples_per_prompt=4, epochs=1, minibatches=1, loss_reduction="sequence_mean"),
    "remax": dict(samples_per_prompt=1, epochs=1, minibatches=1, loss_reduction="sequence"),
}


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """Static hyperparameters; PPO defaults from Huang et al. 2024 ("N+ implementation details")."""
  max_new_tokens: int
  eos_id: int
  pad_id: int
  algo: str = "ppo"
  samples_per_prompt: int = 1  # k: RLOO and GRPO compare the k responses to one prompt
  temperature: float = 0.7
  epochs: int = 4
  minibatches: int = 1
  accum_steps: int = 1  # microbatches per minibatch (gradient accumulation)
  clip_eps: float = 0.2
  loss_reduction: str = "token"  # token | sequence | sequence_mean (reinforce.token_weights)
  value_clip: float = 0.2
  vf_coef: float = 0.1
  ent_coef: float = 0.0
  gamma: float = 1.0
  lam: float = 0.95
  baseline_decay: float = 0.9  # REINFORCE's moving average
  scale_by_std: bool = True  # GRPO: divide by the group's std
  kl_kind: str = "k1"
  kl_in_loss: bool = False  # the KL as a k3 loss term (GRPO's choice) instead of in the reward
  kl_target: float = 6.0
  kl_horizon: float = 10000.0
  adaptive_kl: bool = False
  no_eos_penalty: float = -1.0
  penalise_no_eos: bool = True
  inject_nan_at: tuple = ()  # fault injection (tests): these iterations' scores are NaN

  @property
  def has_critic(self) -> bool:
    return self.algo == "ppo"


class Rollout(NamedTuple):
  tokens: jax.Array  # [batch, prompt + new] prompt then response
  mask: jax.Array  # [batch, prompt + new] real tokens
  logprobs: jax.Array  # [batch, new] at sampling time (the "old" policy)
  ref_logprobs: jax.Array  # [batch, new] under the frozen reference
  values: jax.Array  # [batch, new] (0 without a critic)
  advantages: jax.Array  # [batch, new]
  returns: jax.Array  # [batch, new] the critic's targets


def token_logprobs(logits, tokens):
  return jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]


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
  """Response logits (over the temperature) and values: one pass when the critic is shared, 0 with none."""
  policy_params, value_params = params
  out = policy.apply({"params": policy_params}, tokens, mask)
  logits = out.logits[:, prompt_len - 1:-1] / temperature
  if critic is not None:
    return logits, response_values(critic, value_params, tokens, mask, prompt_len)
  if "value" in out.scalars:  # the value head on the policy backbone
    return logits, out.scalars["value"][:, prompt_len - 1:-1]
  return logits, jnp.zeros(logits.shape[:2], jnp.float32)


def _sample_and_score(state, prompts, prompt_mask, rng, settings, *, policy, score_fn, cfg):
  """Responses and their scores (no EOS -> the fixed penalty): (tokens, mask, sampled, scores, ended)."""
  out = sample(policy, state.policy, prompts, prompt_mask, rng, settings, max_new_tokens=cfg.max_new_tokens,
               eos_id=cfg.eos_id, pad_id=cfg.pad_id)
  tokens = jnp.concatenate([prompts, out.tokens], axis=1)
  mask = jnp.concatenate([prompt_mask.astype(jnp.int32), out.mask], axis=1)
  ended = jnp.any((out.tokens == cfg.eos_id) & (out.mask > 0), axis=1)
  scores = score_fn(state, tokens, mask, out)
  if cfg.penalise_no_eos:
    scores = jnp.where(ended, scores, cfg.no_eos_penalty)
  return tokens, mask, out, scores, ended


def _advantages(state, rewards, values, response_mask, greedy_scores, cfg: RLConfig):
  """(advantages, returns, new REINFORCE baseline): GAE for PPO, else one per response, spread."""
  if cfg.has_critic:
    advantages, returns = gae.generalized_advantage_estimation(rewards, values, response_mask, cfg.gamma, cfg.lam)
    return ppo.whiten(advantages, response_mask), returns, state.baseline
  sequence_returns = jnp.sum(rewards, axis=1)  # score - kl_coef * sum_t kl_t (gamma 1)
  baseline = state.baseline
  if cfg.algo == "reinforce":
    per_response, baseline = reinforce.moving_average_baseline(sequence_returns, baseline, cfg.baseline_decay)
  elif cfg.algo == "rloo":
    per_response = reinforce.rloo_advantages(sequence_returns, cfg.samples_per_prompt)
  elif cfg.algo == "grpo":
    per_response = reinforce.grpo_advantages(sequence_returns, cfg.samples_per_prompt, cfg.scale_by_std)
  elif cfg.algo == "remax":
    per_response = reinforce.remax_advantages(sequence_returns, greedy_scores)
  else:
    raise ValueError(f"unknown algo {cfg.algo!r}: one of {ALGOS}")
  spread = lambda x: x[:, None] * response_mask
  return spread(per_response), spread(sequence_returns), baseline


def in_chunks(fn: Callable, rows, chunks: int):
  """fn over `chunks` slices of the rows, one after another (`lax.map`): the peak memory of
  one update's microbatch, not of the whole batch (whose logits may not fit). Chunk i holds
  rows i, i + chunks, ...: strided, so each chunk spreads over the devices as the batch does."""
  if chunks == 1:
    return fn(*rows)
  split = jax.tree.map(lambda x: x.reshape(-1, chunks, *x.shape[1:]).swapaxes(0, 1), rows)
  merge = lambda x: x.swapaxes(0, 1).reshape(-1, *x.shape[2:])
  return jax.tree.map(merge, jax.lax.map(lambda r: fn(*r), split))


def _score_tokens(state, tokens, mask, *, policy, critic, prompt_len: int, cfg: RLConfig):
  """Log-probs of the response under the policy and the reference, and the critic's values."""
  logits, values = logits_and_values((state.policy, state.value), tokens, mask, prompt_len, policy=policy,
                                     critic=critic, temperature=cfg.temperature)
  logprobs = token_logprobs(logits, tokens[:, prompt_len:])
  return logprobs, response_logprobs(policy, state.ref, tokens, mask, prompt_len, cfg.temperature), values


def rollout(state: RLState, prompts, prompt_mask, rng, *, policy, critic, score_fn: Callable, cfg: RLConfig):
  """Samples k responses per prompt, scores them, computes advantages. Returns (Rollout, baseline, metrics)."""
  prompts, prompt_mask = (jnp.repeat(x, cfg.samples_per_prompt, axis=0) for x in (prompts, prompt_mask))
  p = prompts.shape[1]
  sample_and_score = functools.partial(_sample_and_score, state, policy=policy, score_fn=score_fn, cfg=cfg)
  tokens, mask, out, scores, ended = sample_and_score(prompts, prompt_mask, rng,
                                                      SamplingParams.make(cfg.temperature))
  scores = scores * guards.injected_nan(state.step, cfg.inject_nan_at)
  greedy_scores = None
  if cfg.algo == "remax":  # the baseline: the greedy response's score (independent of the sample)
    greedy_scores = sample_and_score(prompts, prompt_mask, rng, SamplingParams.make(cfg.temperature,
                                                                                    greedy=True))[3]
  logprobs, ref_logprobs, values = in_chunks(
      functools.partial(_score_tokens, state, policy=policy, critic=critic, prompt_len=p, cfg=cfg),
      (tokens, mask), cfg.minibatches * cfg.accum_steps)
  rewards, kl_metrics = kl.penalised_rewards(scores, logprobs, ref_logprobs, out.mask,
                                             kl_coef=0.0 if cfg.kl_in_loss else state.kl.coef, kind=cfg.kl_kind)
  advantages, returns, baseline = _advantages(state, rewards, values, out.mask, greedy_scores, cfg)
  metrics = {**kl_metrics, "kl_coef": state.kl.coef, "response_length": jnp.mean(jnp.sum(out.mask, axis=1)),
             "no_eos_fraction": 1.0 - jnp.mean(ended),
             "nonfinite_rewards": jnp.logical_not(guards.all_finite(rewards)).astype(jnp.float32)}
  if cfg.has_critic:
    metrics["explained_variance"] = ppo.explained_variance(values, returns, out.mask)
  return Rollout(tokens, mask, logprobs, ref_logprobs, values, advantages, returns), baseline, metrics


def rl_loss(params, batch, *, policy, critic, cfg: RLConfig, prompt_len: int, kl_coef):
  """The loss of a (micro)batch of `(Rollout, (policy_weights, token_weights))`.

  Every term is a weighted sum over tokens with weights that sum to 1 over the minibatch, so
  microbatch losses add up to the minibatch's and gradient accumulation is exact.
  """
  rollout_batch, (policy_weights, token_weights) = batch
  logits, values = logits_and_values(params, rollout_batch.tokens, rollout_batch.mask, prompt_len, policy=policy,
                                     critic=critic, temperature=cfg.temperature)
  logprobs = token_logprobs(logits, rollout_batch.tokens[:, prompt_len:])
  loss, metrics = ppo.clipped_surrogate_loss(logprobs, rollout_batch.logprobs, rollout_batch.advantages,
                                             policy_weights, clip_eps=cfg.clip_eps, metric_weights=token_weights)
  metrics["policy_loss"] = loss
  metrics["entropy"] = masked_sum(ppo.entropy_from_logits(logits), token_weights)
  loss = loss - cfg.ent_coef * metrics["entropy"]
  if cfg.kl_in_loss:
    metrics["kl_loss"] = masked_sum(kl.kl_penalty(logprobs, rollout_batch.ref_logprobs, "k3"), policy_weights)
    loss = loss + kl_coef * metrics["kl_loss"]
  if cfg.has_critic:
    v_loss, v_metrics = ppo.clipped_value_loss(values, rollout_batch.values, rollout_batch.returns, token_weights,
                                               clip=cfg.value_clip)
    loss, metrics = loss + cfg.vf_coef * v_loss, {**metrics, **v_metrics}
  return loss, metrics


def apply_updates(tx, grads, opt_state, params):
  if tx is None:  # no separate critic
    return params, opt_state
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def update_metrics(per_update: dict) -> dict:
  """Means over the iteration's updates; skipped updates are counted, non-finite flags kept if any."""
  reduce = lambda k: jnp.sum if k == "skipped_updates" else jnp.max if k.startswith("nonfinite_") else jnp.mean
  return {k: reduce(k)(v) for k, v in per_update.items() if k != "loss"}


def minibatch_update(carry, minibatch, *, loss_fn, prompt_len: int, cfg: RLConfig, txs, rewards_ok):
  """One optimizer update of (policy, critic) on a minibatch of the rollout (a `lax.scan`
  step): refused, carry unchanged, if its loss, gradients or the rollout's rewards are not finite."""
  response_mask = minibatch.mask[:, prompt_len:]
  weights = (reinforce.token_weights(response_mask, cfg.loss_reduction),
             reinforce.token_weights(response_mask, "token"))
  grads, m = accumulate_gradients(loss_fn, carry[0], (minibatch, weights), cfg.accum_steps)
  ok, flags = guards.check(loss=m["loss"], grads=grads)
  ok = ok & rewards_ok  # no update learns from a non-finite reward

  def apply(carry):
    params, opt_states = carry
    new = [apply_updates(tx, g, o, p) for tx, g, o, p in zip(txs, grads, opt_states, params)]
    return tuple(p for p, _ in new), tuple(o for _, o in new)
  return guards.apply_if(ok, apply, carry), {**m, **flags, "skipped_updates": 1.0 - ok}


def rl_iteration(state: RLState, prompts, prompt_mask, *, policy, critic, policy_tx, value_tx,
                 score_fn: Callable, cfg: RLConfig):
  """One iteration: (state, prompts) -> (state, metrics). Frozen params pass through.

  Without a separate critic (`critic` and `value_tx` None) `state.value` is None and
  `policy_tx` updates all of the policy's params, a shared value head included.
  """
  rng, sample_rng, shuffle_rng = jax.random.split(state.rng, 3)
  batch, baseline, metrics = rollout(state, prompts, prompt_mask, sample_rng, policy=policy, critic=critic,
                                     score_fn=score_fn, cfg=cfg)
  p, n = prompts.shape[1], batch.tokens.shape[0]
  loss_fn = functools.partial(rl_loss, policy=policy, critic=critic, cfg=cfg, prompt_len=p, kl_coef=state.kl.coef)

  rewards_ok = metrics["nonfinite_rewards"] == 0
  update = functools.partial(minibatch_update, loss_fn=loss_fn, prompt_len=p, cfg=cfg, txs=(policy_tx, value_tx),
                             rewards_ok=rewards_ok)

  def epoch(carry, key):
    order = jax.random.permutation(key, n).reshape(cfg.minibatches, -1)
    return jax.lax.scan(update, carry, jax.tree.map(lambda x: x[order], batch))

  carry = ((state.policy, state.value), (state.policy_opt, state.value_opt))
  ((policy_params, value_params), (policy_opt, value_opt)), losses = jax.lax.scan(
      epoch, carry, jax.random.split(shuffle_rng, cfg.epochs))
  new_kl = kl.update_kl_controller(state.kl, metrics["kl"], n, target=cfg.kl_target, horizon=cfg.kl_horizon,
                                   adaptive=cfg.adaptive_kl)
  new_kl, baseline = guards.select(rewards_ok, (new_kl, baseline), (state.kl, state.baseline))
  metrics.update(update_metrics(losses))
  state = state.replace(step=state.step + 1, policy=policy_params, policy_opt=policy_opt, value=value_params,
                        value_opt=value_opt, kl=new_kl, baseline=baseline, rng=rng)
  return state, metrics
