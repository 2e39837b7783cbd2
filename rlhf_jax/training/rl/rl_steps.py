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
(`scoring_pass`: its pullback gives that update's gradients). The updates themselves are
rl_update.py's; the hyperparameters and the update's batch, rl_config.py's.

With one epoch and one minibatch the ratio is 1 at the update, so the clipped surrogate's
gradient is the plain policy gradient: that is REINFORCE's and RLOO's update.
PPO's critic is a separate model (`critic`, with its own params and optimizer) or, with
`critic=None` and a policy that has a value head, a head on the policy backbone: one forward
pass gives log-probs and values, and the value loss trains the shared trunk too.
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from rlhf_jax.algorithms import kl, ppo, shaping, token_rewards
from rlhf_jax.algorithms.advantages import ADVANTAGES, AdvantageInputs
from rlhf_jax.algorithms.importance import importance_weights
from rlhf_jax.algorithms.rollout_correction import correction_weights, mismatch_metrics, routing_metrics
from rlhf_jax.models.continuous import generate
from rlhf_jax.models.sampling import SamplingParams, is_stop
from rlhf_jax.training.core import guards
from rlhf_jax.training.core.logprobs import response_logprobs
from rlhf_jax.training.core.steps import accumulate_gradients
from rlhf_jax.training.policy.policy_state import policy_params
from rlhf_jax.training.rl.rl_config import RLConfig, Rollout
from rlhf_jax.training.rl.rl_state import RLState, frozen_bases
from rlhf_jax.training.rl import packing as packing_lib
from rlhf_jax.training.rl.rl_update import all_updates, loss_outputs, minibatch_update, packed_gradients
from rlhf_jax.training.rl.rl_update import pulled_back_gradients, rl_loss, update_metrics


class HostScores(NamedTuple):
  """What the host reward functions made of the sampled responses (rewards.score_on_host)."""
  total: jax.Array  # [n] their weighted sum
  components: jax.Array  # [n, components] each one's score (NaN where it does not apply)
  greedy: jax.Array | None = None  # [n] ReMax: the greedy responses' weighted sum


class TokenScores(NamedTuple):
  """The scoring pass's per-token results on the sampled responses, [n, new] each."""
  logprobs: jax.Array  # the policy's, recomputed (replaying the sampler's experts with rl.router_replay)
  ref_logprobs: jax.Array  # the frozen reference's
  values: jax.Array  # the critic's (0 with none)
  agreement: Any = None  # an MoE policy's live routing against the sampler's (Outputs.agreement); None: dense


class Sampled(NamedTuple):
  """The sampling half of a rollout: the responses, whether each ended, and the in-graph part
  of their scores (the reward model's; 0 with none). Host rewards score it between the halves."""
  tokens: jax.Array  # [n, prompt + new] prompt then response
  mask: jax.Array  # [n, prompt + new]
  response: Any  # models.sampling's output: the response tokens, mask and sampler log-probs
  ended: jax.Array  # [n] the response holds EOS or another stop id
  scores: jax.Array  # [n] the reward model's (unweighted; 0 without one)
  greedy: Any = None  # ReMax: the greedy responses, a Sampled of their own


def _sample(state, prompts, prompt_mask, rng, settings, *, policy, score_fn, cfg) -> Sampled:
  out = generate(policy, policy_params(state), prompts, prompt_mask, rng, settings, max_new_tokens=cfg.max_new_tokens,
                 stop_ids=cfg.stop_ids, pad_id=cfg.pad_id, batching=cfg.batching, slots=cfg.slots,
                 cache_blocks=cfg.cache_blocks, block_size=cfg.block_size, paged_attention=cfg.paged_attention)
  return sampled_of(state, prompts, prompt_mask, out, score_fn=score_fn, cfg=cfg)


def sampled_of(state, prompts, prompt_mask, out, *, score_fn, cfg) -> Sampled:
  """The `Sampled` of responses `out` (a SampleOutput, from any engine) to these prompts."""
  tokens = jnp.concatenate([prompts, out.tokens], axis=1)
  mask = jnp.concatenate([prompt_mask.astype(jnp.int32), out.mask], axis=1)
  ended = jnp.any(is_stop(out.tokens, cfg.stop_ids) & (out.mask > 0), axis=1)
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


def trainable_outputs(state: RLState, tokens, mask, *, policy, critic, prompt_len: int, cfg: RLConfig,
                      segments=None, experts=None) -> Callable:
  """`loss_outputs` on these tokens as a function of the trainable (policy, critic) params on the
  state's frozen bases: what the scoring pass evaluates and the updates differentiate."""
  return functools.partial(loss_outputs, tokens=tokens, mask=mask, policy=policy, critic=critic, cfg=cfg,
                           prompt_len=prompt_len, bases=frozen_bases(state), segments=segments, experts=experts)


def _score_tokens(state, tokens, mask, experts=None, *, policy, critic, prompt_len: int, cfg: RLConfig,
                  segments=None) -> TokenScores:
  """Log-probs of the response under the policy and the reference, and the critic's values.
  The reference routes live, replay or not: the sampler's experts are the policy's (as R3)."""
  forward = trainable_outputs(state, tokens, mask, policy=policy, critic=critic, prompt_len=prompt_len, cfg=cfg,
                              segments=segments, experts=experts)
  out = forward((state.policy, state.value))
  ref_logprobs = response_logprobs(policy, state.ref, tokens, mask, prompt_len, cfg.temperature, segments)
  return TokenScores(out.logprobs, ref_logprobs, out.values, out.agreement)


def reuses_scoring_pass(cfg: RLConfig) -> bool:
  """Whether the first update's backward pass starts from the scoring pass (`scoring_pass`):
  with one minibatch and no accumulation that update's forward pass is the scoring pass itself
  (the same params on the same tokens). DAPO's refill scores only the groups it keeps; with host
  rewards the scoring runs in a program of its own, while the host scores (host_rewards.py)."""
  return (cfg.reuse_scoring_pass and cfg.minibatches * cfg.accum_steps == 1 and not cfg.oversample
          and not cfg.host_rewards and not cfg.packing)


def scoring_pass(state: RLState, sampled: Sampled, *, policy, critic, cfg: RLConfig):
  """`score_tokens`'s (log-probs, reference log-probs, values), and the policy's and critic's
  outputs (`loss_outputs`) with their pullback to the trainable params (`jax.vjp`): the first
  update differentiates this pass instead of running its own, one forward pass of the policy
  and of the critic fewer per iteration (a seventh of W4's model FLOPs). Exact: the outputs are
  the ones the update's forward pass would compute. The pass holds the update's activations
  (one minibatch: the whole batch) while the reference scores."""
  p = prompt_length(sampled)
  forward = trainable_outputs(state, sampled.tokens, sampled.mask, policy=policy, critic=critic, prompt_len=p, cfg=cfg,
                              experts=sampled.response.experts)
  outputs, pullback = jax.vjp(forward, (state.policy, state.value))
  ref_logprobs = response_logprobs(policy, state.ref, sampled.tokens, sampled.mask, p, cfg.temperature)
  return TokenScores(outputs.logprobs, ref_logprobs, outputs.values, outputs.agreement), outputs, pullback


def prompt_length(sampled: Sampled) -> int:
  return sampled.tokens.shape[1] - sampled.response.tokens.shape[1]


def score_tokens(state: RLState, sampled: Sampled, *, policy, critic, cfg: RLConfig) -> TokenScores:
  """`TokenScores` of the sampled responses, in update-sized chunks."""
  p = prompt_length(sampled)
  if cfg.packing:
    return packed_scores(state, sampled, policy=policy, critic=critic, cfg=cfg)
  return in_chunks(functools.partial(_score_tokens, state, policy=policy, critic=critic, prompt_len=p, cfg=cfg),
                   (sampled.tokens, sampled.mask, sampled.response.experts), cfg.minibatches * cfg.accum_steps)


def packed_scores(state: RLState, sampled: Sampled, *, policy, critic, cfg: RLConfig):
  """`score_tokens` on the trajectories packed into rows (packing.py), a microbatch at a time."""
  p, n = prompt_length(sampled), sampled.tokens.shape[0]
  packing = packing_lib.pack(sampled.tokens, sampled.mask, jnp.ones(n, bool), p, cfg.packed_rows(n))

  def body(carry):
    j, scores = carry
    tokens, mask, segments = packing.microbatch(j)
    new = _score_tokens(state, tokens, mask, policy=policy, critic=critic, prompt_len=1, cfg=cfg, segments=segments)
    return j + 1, tuple(packing_lib.unpack(packing, j, x, old, p) for x, old in zip(new, scores))

  zeros = jnp.zeros(sampled.response.tokens.shape, jnp.float32)
  return TokenScores(*jax.lax.while_loop(lambda c: c[0] < packing.count, body, (jnp.int32(0), (zeros,) * 3))[1])


def total_scores(cfg: RLConfig, sampled: Sampled, host_total):
  """The weighted reward model's score plus the token rewards' and the host rewards' (if any);
  a response without EOS (or another stop id) gets the penalty."""
  scores = sampled.scores if cfg.model_weight in (None, 1.0) else cfg.model_weight * sampled.scores
  if cfg.token_rewards:
    scores = scores + token_scores_of(cfg, sampled)[1]
  scores = scores if host_total is None else scores + host_total
  return jnp.where(sampled.ended, scores, cfg.no_eos_penalty) if cfg.penalise_no_eos else scores


def token_scores_of(cfg: RLConfig, sampled: Sampled):
  """({NAME: [n]}, weighted sum [n]) of the token rewards on the sampled responses."""
  response = sampled.response
  return token_rewards.weighted_sum(cfg.token_rewards, response.tokens, response.mask, sampled.ended,
                                    cfg.token_reward_params)


def component_metrics(cfg: RLConfig, sampled: Sampled, host: HostScores | None) -> dict:
  """reward/NAME: the mean of each reward component over the update's responses."""
  metrics = {"reward/model": jnp.mean(sampled.scores)} if cfg.model_weight is not None else {}
  if cfg.token_rewards:
    metrics.update({f"reward/{name}": jnp.mean(scores) for name, scores in token_scores_of(cfg, sampled)[0].items()})
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
  # A group whose k task scores all agree (before the length shaping) teaches a group baseline
  # nothing: logged for every k > 1, and given weight 0 by dynamic sampling.
  informative = shaping.informative_groups(scores, cfg.samples_per_prompt)
  weights = informative if cfg.dynamic_sampling else jnp.ones_like(scores)
  drawn = {"uninformative_fraction": 1.0 - jnp.mean(informative)} if cfg.samples_per_prompt > 1 else {}
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
  logprobs, ref_logprobs, values, agreement = TokenScores(*token_scores)
  old_logprobs, is_weights, is_metrics = behaviour_correction(cfg, logprobs, sampled.response, agreement)
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
                  estimate.returns, weights, response_mask, is_weights,
                  sampled.response.experts if cfg.router_replay else None)
  return batch, estimate.baseline, metrics


def behaviour_correction(cfg: RLConfig, logprobs, response, agreement=None):
  """(the log-probs the ratio is taken against, importance weights or None, metrics).

  The sampler/trainer mismatch is logged every iteration (algorithms/rollout_correction.py), and
  an MoE policy's routing agreement (`agreement`: TokenScores').
  With `cfg.rollout_correction` the ratio is against the recomputed log-probs and the
  correction's weights multiply each token's policy loss, on- or off-policy (decoupled).
  Otherwise, on-policy the ratio is against the recomputed log-probs; off-policy
  (`cfg.off_policy_steps`) against the sampler's (the behaviour policy's, K iterations old) for
  PPO, while a critic-free method keeps the recomputed ones (its update starts at ratio 1, the
  policy gradient) and weights each token by the importance correction pi_old / mu
  (algorithms/importance.py)."""
  behaviour = response.logprobs
  metrics = {**mismatch_metrics(logprobs, behaviour, response.mask), **routing_metrics(agreement, response.mask)}
  if cfg.rollout_correction != "none":
    weights, changed = correction_weights(cfg.rollout_correction, logprobs, behaviour, response.mask,
                                          cfg.correction_params)
    return logprobs, weights, {**metrics, "rollout/corrected_fraction": changed}
  if not cfg.off_policy_steps:
    return logprobs, None, metrics
  weights, is_metrics = importance_weights(cfg.is_correction, logprobs, behaviour, response.mask, cfg.is_cap)
  metrics.update(is_metrics)
  return (behaviour, None, metrics) if cfg.has_critic else (logprobs, weights, metrics)


def rollout(state: RLState, prompts, prompt_mask, rng, *, policy, critic, score_fn: Callable, cfg: RLConfig):
  """Samples k responses per prompt, scores them in the graph, computes advantages: the whole
  rollout of an iteration without host rewards. Returns (Rollout, baseline, metrics)."""
  sampled = sample_rollout(state, prompts, prompt_mask, rng, policy=policy, score_fn=score_fn, cfg=cfg)
  return finish_rollout(state, sampled, policy=policy, critic=critic, cfg=cfg)


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
  update = functools.partial(minibatch_update, cfg=cfg, txs=(policy_tx, value_tx),
                             rewards_ok=rewards_ok)
  first_grad_fn = None if first is None else pulled_back_gradients(*first, cfg=cfg, kl_coef=state.kl.coef,
                                                                    aux_coef=policy.cfg.router_aux_coef)
  grad_fn = lambda params, b: accumulate_gradients(loss_fn, params, b, cfg.accum_steps)
  if cfg.packing:
    outputs_fn = lambda params, tokens, mask, segments: trainable_outputs(
        state, tokens, mask, policy=policy, critic=critic, prompt_len=1, cfg=cfg, segments=segments)(params)
    grad_fn = packed_gradients(outputs_fn, p, cfg.packed_rows(n), cfg=cfg, kl_coef=state.kl.coef)
  carry = ((state.policy, state.value), (state.policy_opt, state.value_opt))
  ((new_policy, new_value), (policy_opt, value_opt)), losses = all_updates(
      carry, batch, jax.random.split(shuffle_rng, cfg.epochs), update=update, minibatches=cfg.minibatches,
      grad_fn=grad_fn, first_grad_fn=first_grad_fn)
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
