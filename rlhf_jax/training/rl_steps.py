"""One RL iteration as one pure function, rollout to last update (PureJaxRL-style).

Every method (`algorithms/presets.py`: PPO, REINFORCE, RLOO, GRPO, ReMax, Dr. GRPO, DAPO, GSPO,
CISPO, REINFORCE++) shares everything but its parts: an advantage estimator, a policy loss and
a loss aggregation, each picked by name from its registry:

  sample `samples_per_prompt` responses per prompt -> recompute log-probs at the sampling
  temperature (policy and frozen reference) -> score (any `score_fn`: the reward model, or a
  programmatic reward) with a fixed penalty for responses without EOS -> per-token KL penalty
  in the reward (or, `kl_in_loss`, a k3 loss term) -> advantages (`algorithms/advantages.py`:
  GAE as a reverse scan on the critic's values, or a critic-free estimator) -> `epochs` x
  `minibatches` policy-loss updates (`algorithms/policy_losses.py`, aggregated as
  `algorithms/aggregation.py` says; nested `lax.scan`, each minibatch optionally over
  `accum_steps` microbatches) -> KL controller update. Jit it once; nothing leaves the device.
With one minibatch the recomputed log-probs' pass is the first update's forward pass too
(`scoring_pass`: its pullback gives that update's gradients).

With one epoch and one minibatch the ratio is 1 at the update, so the clipped surrogate's
gradient is the plain policy gradient: that is REINFORCE's and RLOO's update.
PPO's critic is a separate model (`critic`, with its own params and optimizer) or, with
`critic=None` and a policy that has a value head, a head on the policy backbone: one forward
pass gives log-probs and values, and the value loss trains the shared trunk too.
"""

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlhf_jax.algorithms import aggregation, kl, ppo, shaping
from rlhf_jax.algorithms.advantages import ADVANTAGES, AdvantageInputs, AdvantageParams
from rlhf_jax.algorithms.importance import importance_weights
from rlhf_jax.algorithms.masked import masked_sum
from rlhf_jax.algorithms.policy_losses import PolicyLossParams, surrogate_loss
from rlhf_jax.models.sampling import SamplingParams, sample
from rlhf_jax.training import guards
from rlhf_jax.training.logprobs import response_logprobs, response_stats
from rlhf_jax.models import lora
from rlhf_jax.training.rl_state import RLState, frozen_bases, policy_params
from rlhf_jax.training.steps import accumulate_gradients

@dataclasses.dataclass(frozen=True)
class RLConfig:
  """Static hyperparameters, resolved (`presets.resolve`); PPO defaults from Huang et al. 2024."""
  max_new_tokens: int
  eos_id: int
  pad_id: int
  algo: str = "ppo"
  advantage: str = "gae"  # algorithms/advantages.py
  policy_loss: str = "clip"  # algorithms/policy_losses.py
  loss_aggregation: str = "token_mean"  # algorithms/aggregation.py
  samples_per_prompt: int = 1  # k: grouped estimators compare the k responses to one prompt
  temperature: float = 0.7
  epochs: int = 4
  minibatches: int = 1
  accum_steps: int = 1  # microbatches per minibatch (gradient accumulation)
  clip_eps: float = 0.2  # the clip range's lower side (and upper, unless clip_eps_high says)
  clip_eps_high: float = 0.2
  dual_clip: float = 3.0
  value_clip: float = 0.2
  vf_coef: float = 0.1
  ent_coef: float = 0.0
  gamma: float = 1.0
  lam: float = 0.95
  baseline_decay: float = 0.9  # REINFORCE's moving average
  scale_by_std: bool = True  # GRPO: divide by the group's std
  dynamic_sampling: bool = False  # DAPO: groups whose k scores are all equal get weight 0
  overlong_buffer: float = 0.0  # DAPO: a soft length penalty over this fraction of the budget's end
  oversample: int = 0  # DAPO: extra prompts drawn per iteration, so informative groups can fill the batch
  model_weight: float | None = 1.0  # the reward model's weight in the score (None: there is none)
  host_rewards: tuple = ()  # the names of the host reward components (rewards.py), in order
  kl_kind: str = "k1"
  kl_in_loss: bool = False  # the KL as a k3 loss term (GRPO's choice) instead of in the reward
  kl_target: float = 6.0
  kl_horizon: float = 10000.0
  adaptive_kl: bool = False
  no_eos_penalty: float = -1.0
  penalise_no_eos: bool = True
  inject_nan_at: tuple = ()  # fault injection (tests): these iterations' scores are NaN
  off_policy_steps: int = 0  # K: updates train on responses sampled K iterations before (off_policy.py)
  is_correction: str = "none"  # algorithms/importance.py: the critic-free methods' weight on stale tokens
  is_cap: float = 2.0
  reuse_scoring_pass: bool = True  # the first update differentiates the scoring pass (one minibatch only)

  @property
  def has_critic(self) -> bool:
    return ADVANTAGES[self.advantage].needs_critic

  @property
  def needs_greedy(self) -> bool:
    return ADVANTAGES[self.advantage].needs_greedy

  @property
  def policy_loss_params(self) -> PolicyLossParams:
    return PolicyLossParams(self.clip_eps, self.clip_eps_high, self.dual_clip)

  @property
  def advantage_params(self) -> AdvantageParams:
    return AdvantageParams(self.samples_per_prompt, self.gamma, self.lam, self.baseline_decay, self.scale_by_std)


class Rollout(NamedTuple):
  tokens: jax.Array  # [batch, prompt + new] prompt then response
  mask: jax.Array  # [batch, prompt + new] real tokens
  logprobs: jax.Array  # [batch, new] at sampling time (the "old" policy)
  ref_logprobs: jax.Array  # [batch, new] under the frozen reference
  values: jax.Array  # [batch, new] (0 without a critic)
  advantages: jax.Array  # [batch, new]
  returns: jax.Array  # [batch, new] the critic's targets
  weights: jax.Array  # [batch] 1, or 0 for a response dynamic sampling leaves out
  is_weights: Any = None  # [batch, new] off-policy: each token's importance correction (None: on-policy)


def response_values(model, params, tokens, mask, prompt_len: int):
  """V(s_t) for each response token t: the value head at the position before it."""
  out = model.apply({"params": params}, tokens, mask, with_logits=False)
  return out.scalars["value"][:, prompt_len - 1:-1]


def stats_and_values(params, tokens, mask, prompt_len: int, *, policy, critic, temperature: float):
  """Response token statistics (log-probs, entropy at the temperature) and values: one pass
  when the critic is shared, 0 with none."""
  policy_params, value_params = params
  out = policy.apply({"params": policy_params}, tokens, mask, with_logits=False)
  stats = response_stats(policy, policy_params, out, tokens, prompt_len, temperature)
  if critic is not None:
    return stats, response_values(critic, value_params, tokens, mask, prompt_len)
  if "value" in out.scalars:  # the value head on the policy backbone
    return stats, out.scalars["value"][:, prompt_len - 1:-1]
  return stats, jnp.zeros(stats.logprobs.shape, jnp.float32)


class HostScores(NamedTuple):
  """What the host reward functions made of the sampled responses (rewards.score_on_host)."""
  total: jax.Array  # [n] their weighted sum
  components: jax.Array  # [n, components] each one's score (NaN where it does not apply)
  greedy: jax.Array | None = None  # [n] ReMax: the greedy responses' weighted sum


class Sampled(NamedTuple):
  """The sampling half of a rollout: the responses, whether each ended, and the in-graph part
  of their scores (the reward model's; 0 with none). Host rewards score it between the halves."""
  tokens: jax.Array  # [n, prompt + new] prompt then response
  mask: jax.Array  # [n, prompt + new]
  response: Any  # models.sampling's output: the response tokens, mask and sampler log-probs
  ended: jax.Array  # [n] the response holds EOS
  scores: jax.Array  # [n] the reward model's (unweighted; 0 without one)
  greedy: Any = None  # ReMax: the greedy responses, a Sampled of their own


def _sample(state, prompts, prompt_mask, rng, settings, *, policy, score_fn, cfg) -> Sampled:
  out = sample(policy, policy_params(state), prompts, prompt_mask, rng, settings, max_new_tokens=cfg.max_new_tokens,
               eos_id=cfg.eos_id, pad_id=cfg.pad_id)
  tokens = jnp.concatenate([prompts, out.tokens], axis=1)
  mask = jnp.concatenate([prompt_mask.astype(jnp.int32), out.mask], axis=1)
  ended = jnp.any((out.tokens == cfg.eos_id) & (out.mask > 0), axis=1)
  scores = score_fn(state, tokens, mask, out) if score_fn else jnp.zeros(tokens.shape[0], jnp.float32)
  return Sampled(tokens, mask, out, ended, scores)


def sample_rollout(state: RLState, prompts, prompt_mask, rng, *, policy, score_fn, cfg: RLConfig) -> Sampled:
  """k responses per prompt (and ReMax's greedy ones), scored by `score_fn` in the graph."""
  prompts, prompt_mask = (jnp.repeat(x, cfg.samples_per_prompt, axis=0) for x in (prompts, prompt_mask))
  draw = functools.partial(_sample, state, prompts, prompt_mask, rng, policy=policy, score_fn=score_fn, cfg=cfg)
  sampled = draw(SamplingParams.make(cfg.temperature))
  if cfg.needs_greedy:  # ReMax's baseline: the greedy response's score (independent of the sample)
    sampled = sampled._replace(greedy=draw(SamplingParams.make(cfg.temperature, greedy=True)))
  return sampled


def in_chunks(fn: Callable, rows, chunks: int):
  """fn over `chunks` slices of the rows, one after another (`lax.map`): the peak memory of
  one update's microbatch, not of the whole batch (whose logits may not fit). Chunk i holds
  rows i, i + chunks, ...: strided, so each chunk spreads over the devices as the batch does."""
  if chunks == 1:
    return fn(*rows)
  split = jax.tree.map(lambda x: x.reshape(-1, chunks, *x.shape[1:]).swapaxes(0, 1), rows)
  merge = lambda x: x.swapaxes(0, 1).reshape(-1, *x.shape[2:])
  return jax.tree.map(merge, jax.lax.map(lambda r: fn(*r), split))


def trainable_outputs(state: RLState, tokens, mask, *, policy, critic, prompt_len: int, cfg: RLConfig) -> Callable:
  """`loss_outputs` on these tokens as a function of the trainable (policy, critic) params on the
  state's frozen bases: what the scoring pass evaluates and the updates differentiate."""
  return functools.partial(loss_outputs, tokens=tokens, mask=mask, policy=policy, critic=critic, cfg=cfg,
                           prompt_len=prompt_len, bases=frozen_bases(state))


def _score_tokens(state, tokens, mask, *, policy, critic, prompt_len: int, cfg: RLConfig):
  """Log-probs of the response under the policy and the reference, and the critic's values."""
  forward = trainable_outputs(state, tokens, mask, policy=policy, critic=critic, prompt_len=prompt_len, cfg=cfg)
  logprobs, _, values = forward((state.policy, state.value))
  return logprobs, response_logprobs(policy, state.ref, tokens, mask, prompt_len, cfg.temperature), values


def reuses_scoring_pass(cfg: RLConfig) -> bool:
  """Whether the first update's backward pass starts from the scoring pass (`scoring_pass`):
  with one minibatch and no accumulation that update's forward pass is the scoring pass itself
  (the same params on the same tokens). DAPO's refill scores only the groups it keeps; with host
  rewards the scoring runs in a program of its own, while the host scores (host_rewards.py)."""
  return (cfg.reuse_scoring_pass and cfg.minibatches * cfg.accum_steps == 1 and not cfg.oversample
          and not cfg.host_rewards)


def scoring_pass(state: RLState, sampled: Sampled, *, policy, critic, cfg: RLConfig):
  """`score_tokens`'s (log-probs, reference log-probs, values), and the policy's and critic's
  outputs (`loss_outputs`) with their pullback to the trainable params (`jax.vjp`): the first
  update differentiates this pass instead of running its own, one forward pass of the policy
  and of the critic fewer per iteration (a seventh of W4's model FLOPs). Exact: the outputs are
  the ones the update's forward pass would compute. The pass holds the update's activations
  (one minibatch: the whole batch) while the reference scores."""
  p = prompt_length(sampled)
  forward = trainable_outputs(state, sampled.tokens, sampled.mask, policy=policy, critic=critic, prompt_len=p, cfg=cfg)
  outputs, pullback = jax.vjp(forward, (state.policy, state.value))
  ref_logprobs = response_logprobs(policy, state.ref, sampled.tokens, sampled.mask, p, cfg.temperature)
  return (outputs[0], ref_logprobs, outputs[2]), outputs, pullback


def prompt_length(sampled: Sampled) -> int:
  return sampled.tokens.shape[1] - sampled.response.tokens.shape[1]


def score_tokens(state: RLState, sampled: Sampled, *, policy, critic, cfg: RLConfig):
  """(log-probs, reference log-probs, values) of the sampled responses, in update-sized chunks."""
  p = prompt_length(sampled)
  return in_chunks(functools.partial(_score_tokens, state, policy=policy, critic=critic, prompt_len=p, cfg=cfg),
                   (sampled.tokens, sampled.mask), cfg.minibatches * cfg.accum_steps)


def total_scores(cfg: RLConfig, sampled: Sampled, host_total):
  """The weighted reward model's score plus the host rewards' (if any); a response without
  EOS gets the penalty."""
  scores = sampled.scores if cfg.model_weight in (None, 1.0) else cfg.model_weight * sampled.scores
  scores = scores if host_total is None else scores + host_total
  return jnp.where(sampled.ended, scores, cfg.no_eos_penalty) if cfg.penalise_no_eos else scores


def component_metrics(cfg: RLConfig, sampled: Sampled, host: HostScores | None) -> dict:
  """reward/NAME: the mean of each reward component over the update's responses."""
  metrics = {"reward/model": jnp.mean(sampled.scores)} if cfg.model_weight is not None else {}
  for i, name in enumerate(cfg.host_rewards):
    metrics[f"reward/{name}"] = jnp.nanmean(host.components[:, i])
  return metrics


def finish_rollout(state: RLState, sampled: Sampled, host: HostScores | None = None, token_scores=None, *,
                   policy, critic, cfg: RLConfig):
  """From sampled responses to the update's batch: scores, dynamic sampling, shaping, log-probs
  and values (`token_scores` when already computed), KL-penalised rewards and advantages.
  `host`: the host reward functions' scores (HostScores), or None. Returns (Rollout, baseline,
  metrics).

  With `cfg.oversample`, that many of the prompts are extra: of the groups drawn, the update
  keeps as many as the batch has without them, informative ones first (`shaping.select_groups`)."""
  scores = total_scores(cfg, sampled, None if host is None else host.total)
  scores = scores * guards.injected_nan(state.step, cfg.inject_nan_at)
  # Dynamic sampling judges a group by its task scores, before the length shaping.
  weights = shaping.informative_groups(scores, cfg.samples_per_prompt) if cfg.dynamic_sampling else \
      jnp.ones_like(scores)
  drawn = {"uninformative_fraction": 1.0 - jnp.mean(weights)}
  if cfg.oversample:  # DAPO's refill: keep the informative groups of the prompts drawn
    keep = scores.shape[0] // cfg.samples_per_prompt - cfg.oversample
    rows = shaping.select_groups(weights, cfg.samples_per_prompt, keep)
    sampled, scores, weights, host, token_scores = jax.tree.map(
        lambda x: x[rows], (sampled, scores, weights, host, token_scores))
    drawn["kept_uninformative_fraction"] = 1.0 - jnp.mean(weights)
  response_mask = sampled.response.mask
  lengths = jnp.sum(response_mask, axis=1)
  buffer = int(cfg.overlong_buffer * cfg.max_new_tokens)
  scores = scores + shaping.overlong_penalty(lengths, cfg.max_new_tokens, buffer)
  greedy_scores = None
  if cfg.needs_greedy:
    greedy_scores = total_scores(cfg, sampled.greedy, None if host is None else host.greedy)
  if token_scores is None:
    token_scores = score_tokens(state, sampled, policy=policy, critic=critic, cfg=cfg)
  logprobs, ref_logprobs, values = token_scores
  old_logprobs, is_weights, is_metrics = behaviour_correction(cfg, logprobs, sampled.response)
  rewards, kl_metrics = kl.penalised_rewards(scores, logprobs, ref_logprobs, response_mask,
                                             kl_coef=0.0 if cfg.kl_in_loss else state.kl.coef, kind=cfg.kl_kind)
  inputs = AdvantageInputs(rewards, scores, values, response_mask, state.baseline, greedy_scores)
  estimate = ADVANTAGES[cfg.advantage].fn(inputs, cfg.advantage_params)
  metrics = {**kl_metrics, "kl_coef": state.kl.coef, "response_length": jnp.mean(lengths),
             "no_eos_fraction": 1.0 - jnp.mean(sampled.ended), **drawn, **component_metrics(cfg, sampled, host),
             **is_metrics,
             "nonfinite_rewards": jnp.logical_not(guards.all_finite(rewards)).astype(jnp.float32)}
  if cfg.has_critic:
    metrics["explained_variance"] = ppo.explained_variance(values, estimate.returns, response_mask)
  batch = Rollout(sampled.tokens, sampled.mask, old_logprobs, ref_logprobs, values, estimate.advantages,
                  estimate.returns, weights, is_weights)
  return batch, estimate.baseline, metrics


def behaviour_correction(cfg: RLConfig, logprobs, response):
  """(the log-probs the ratio is taken against, importance weights or None, metrics).

  On-policy these are the recomputed log-probs themselves. Off-policy (`cfg.off_policy_steps`)
  the sampler's (the behaviour policy's, K iterations old) are the ones PPO's ratio takes; a
  critic-free method keeps the recomputed ones (its update starts at ratio 1, the policy
  gradient) and weights each token by the importance correction pi_old / mu
  (algorithms/importance.py). The correction's statistics are logged either way."""
  if not cfg.off_policy_steps:
    return logprobs, None, {}
  behaviour = response.logprobs
  weights, metrics = importance_weights(cfg.is_correction, logprobs, behaviour, response.mask, cfg.is_cap)
  return (behaviour, None, metrics) if cfg.has_critic else (logprobs, weights, metrics)


def rollout(state: RLState, prompts, prompt_mask, rng, *, policy, critic, score_fn: Callable, cfg: RLConfig):
  """Samples k responses per prompt, scores them in the graph, computes advantages: the whole
  rollout of an iteration without host rewards. Returns (Rollout, baseline, metrics)."""
  sampled = sample_rollout(state, prompts, prompt_mask, rng, policy=policy, score_fn=score_fn, cfg=cfg)
  return finish_rollout(state, sampled, policy=policy, critic=critic, cfg=cfg)


def loss_outputs(params, tokens, mask, *, policy, critic, cfg: RLConfig, prompt_len: int, bases=(None, None)):
  """What the loss reads of the models: the response tokens' (log-probs, entropies, values)
  under the trainable `params` (policy, critic) on their frozen LoRA `bases` (rl_state.frozen_bases)."""
  params = tuple(lora.combine(base, p) for base, p in zip(bases, params))
  stats, values = stats_and_values(params, tokens, mask, prompt_len, policy=policy, critic=critic,
                                   temperature=cfg.temperature)
  return stats.logprobs, stats.entropy, values


def rl_loss(params, batch, *, policy, critic, cfg: RLConfig, prompt_len: int, kl_coef, bases=(None, None)):
  """The loss of a (micro)batch of `(Rollout, (policy_weights, token_weights))`, differentiated
  in `params` (policy, critic): what trains, on the frozen LoRA `bases`."""
  rollout_batch = batch[0]
  outputs = loss_outputs(params, rollout_batch.tokens, rollout_batch.mask, policy=policy, critic=critic, cfg=cfg,
                         prompt_len=prompt_len, bases=bases)
  return loss_of_outputs(outputs, batch, cfg=cfg, kl_coef=kl_coef)


def loss_of_outputs(outputs, batch, *, cfg: RLConfig, kl_coef):
  """`rl_loss` as a function of the models' outputs (`loss_outputs`).

  Every term is a weighted sum over tokens with weights that sum to 1 over the minibatch, so
  microbatch losses add up to the minibatch's and gradient accumulation is exact.
  """
  logprobs, entropy, values = outputs
  rollout_batch, (policy_weights, token_weights) = batch
  corrected = policy_weights if rollout_batch.is_weights is None else policy_weights * rollout_batch.is_weights
  loss, metrics = surrogate_loss(cfg.policy_loss, logprobs, rollout_batch.logprobs, rollout_batch.advantages,
                                 corrected, token_weights, cfg.policy_loss_params)
  metrics["policy_loss"] = loss
  metrics["entropy"] = masked_sum(entropy, token_weights)
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
  """Means over the iteration's [epochs, minibatches] updates; skipped updates are counted,
  non-finite flags kept if any, and `max_*` metrics are the first update's (where the ratio
  must be 1: the rollout's log-probs come from the same params)."""
  def reduce(key, values):
    if key.startswith("max_"):
      return values.reshape(-1)[0]
    return (jnp.sum if key == "skipped_updates" else jnp.max if key.startswith("nonfinite_") else jnp.mean)(values)
  return {k: reduce(k, v) for k, v in per_update.items() if k != "loss"}


def minibatch_update(carry, minibatch, *, grad_fn, prompt_len: int, cfg: RLConfig, txs, rewards_ok):
  """One optimizer update of (policy, critic) on a minibatch of the rollout (a `lax.scan`
  step), its gradients from `grad_fn(params, (minibatch, weights))`: refused, carry unchanged,
  if its loss, gradients or the rollout's rewards are not finite."""
  response_mask = minibatch.mask[:, prompt_len:] * minibatch.weights[:, None]
  weights = (aggregation.token_weights(response_mask, cfg.loss_aggregation, cfg.max_new_tokens),
             aggregation.token_weights(response_mask, "token_mean"))
  grads, m = grad_fn(carry[0], (minibatch, weights))
  ok, flags = guards.check(loss=m["loss"], grads=grads)
  ok = ok & rewards_ok  # no update learns from a non-finite reward

  def apply(carry):
    params, opt_states = carry
    new = [apply_updates(tx, g, o, p) for tx, g, o, p in zip(txs, grads, opt_states, params)]
    return tuple(p for p, _ in new), tuple(o for _, o in new)
  return guards.apply_if(ok, apply, carry), {**m, **flags, "skipped_updates": 1.0 - ok}


def pulled_back_gradients(outputs, pullback, *, cfg: RLConfig, kl_coef):
  """`grad_fn` of the first update from the scoring pass's outputs and pullback
  (`scoring_pass`): the loss differentiated in the outputs, then pulled back to the params the
  pass ran at (which the first update's carry holds)."""
  def grad_fn(unused_params, batch):
    (loss, metrics), d_outputs = jax.value_and_grad(loss_of_outputs, has_aux=True)(outputs, batch, cfg=cfg,
                                                                                   kl_coef=kl_coef)
    return pullback(d_outputs)[0], {"loss": loss, **metrics}
  return grad_fn


def all_updates(carry, batch: Rollout, keys, *, update, grad_fn, minibatches: int, first_grad_fn=None):
  """`len(keys)` epochs of `minibatches` updates (`update` with `grad_fn`), each epoch over its
  own shuffle of the batch: nested `lax.scan`s. With `first_grad_fn` (the scoring pass's,
  `pulled_back_gradients`) the first update is the whole batch's with it, unshuffled (the order
  does not change a full-batch loss), and the other epochs shuffle as they would otherwise.
  Returns (carry, per-update metrics [epochs, minibatches])."""
  n = batch.tokens.shape[0]

  def epoch(carry, key):
    order = jax.random.permutation(key, n).reshape(minibatches, -1)
    return jax.lax.scan(functools.partial(update, grad_fn=grad_fn), carry, jax.tree.map(lambda x: x[order], batch))

  if first_grad_fn is None:
    return jax.lax.scan(epoch, carry, keys)
  carry, first = update(carry, batch, grad_fn=first_grad_fn)
  losses = jax.tree.map(lambda x: x.reshape(1, 1), first)
  if len(keys) > 1:
    carry, rest = jax.lax.scan(epoch, carry, keys[1:])
    losses = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), losses, rest)
  return carry, losses


def sample_phase(state: RLState, prompts, prompt_mask, *, policy, score_fn: Callable, cfg: RLConfig) -> Sampled:
  """The iteration's sampling half (its rng is the iteration's sampling key)."""
  _, sample_rng, _ = jax.random.split(state.rng, 3)
  return sample_rollout(state, prompts, prompt_mask, sample_rng, policy=policy, score_fn=score_fn, cfg=cfg)


def update_phase(state: RLState, sampled: Sampled, host: HostScores | None = None, token_scores=None, *,
                 policy, critic, policy_tx, value_tx, cfg: RLConfig):
  """The iteration's other half: the rollout finished (`finish_rollout`), `epochs` x
  `minibatches` updates (`all_updates`; with one minibatch the first differentiated from the
  scoring pass, `reuses_scoring_pass`), the KL controller. Returns (state, metrics)."""
  rng, _, shuffle_rng = jax.random.split(state.rng, 3)
  first = None
  if token_scores is None and reuses_scoring_pass(cfg):
    token_scores, *first = scoring_pass(state, sampled, policy=policy, critic=critic, cfg=cfg)
  batch, baseline, metrics = finish_rollout(state, sampled, host, token_scores, policy=policy, critic=critic,
                                            cfg=cfg)
  p, n = prompt_length(sampled), batch.tokens.shape[0]
  loss_fn = functools.partial(rl_loss, policy=policy, critic=critic, cfg=cfg, prompt_len=p, kl_coef=state.kl.coef,
                              bases=frozen_bases(state))
  rewards_ok = metrics["nonfinite_rewards"] == 0
  update = functools.partial(minibatch_update, prompt_len=p, cfg=cfg, txs=(policy_tx, value_tx),
                             rewards_ok=rewards_ok)
  first_grad_fn = None if first is None else pulled_back_gradients(*first, cfg=cfg, kl_coef=state.kl.coef)
  carry = ((state.policy, state.value), (state.policy_opt, state.value_opt))
  ((new_policy, new_value), (policy_opt, value_opt)), losses = all_updates(
      carry, batch, jax.random.split(shuffle_rng, cfg.epochs), update=update, minibatches=cfg.minibatches,
      grad_fn=lambda params, b: accumulate_gradients(loss_fn, params, b, cfg.accum_steps), first_grad_fn=first_grad_fn)
  new_kl = kl.update_kl_controller(state.kl, metrics["kl"], n, target=cfg.kl_target, horizon=cfg.kl_horizon,
                                   adaptive=cfg.adaptive_kl)
  new_kl, baseline = guards.select(rewards_ok, (new_kl, baseline), (state.kl, state.baseline))
  metrics.update(update_metrics(losses))
  state = state.replace(step=state.step + 1, policy=new_policy, policy_opt=policy_opt, value=new_value,
                        value_opt=value_opt, kl=new_kl, baseline=baseline, rng=rng)
  return state, metrics


def rl_iteration(state: RLState, prompts, prompt_mask, *, policy, critic, policy_tx, value_tx,
                 score_fn: Callable, cfg: RLConfig):
  """One iteration with in-graph rewards only: (state, prompts) -> (state, metrics), one
  compiled program. Frozen params pass through.

  Without a separate critic (`critic` and `value_tx` None) `state.value` is None and
  `policy_tx` updates all of the policy's params, a shared value head included.
  """
  sampled = sample_phase(state, prompts, prompt_mask, policy=policy, score_fn=score_fn, cfg=cfg)
  return update_phase(state, sampled, policy=policy, critic=critic, policy_tx=policy_tx, value_tx=value_tx,
                      cfg=cfg)
