"""The RL iteration's updates: the loss of a (micro)batch of the rollout, one optimizer update
per minibatch, and the epochs' nested `lax.scan`s (rl_steps.py runs them after the rollout).

The loss reads the models through `loss_outputs` (the response tokens' log-probs, entropies and
values) and `loss_of_outputs` is the rest of it, so the first update can differentiate the
rollout's scoring pass instead of a forward pass of its own (`pulled_back_gradients`).
"""

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from rlhf_jax.algorithms import aggregation, kl, ppo
from rlhf_jax.algorithms.masked import masked_sum
from rlhf_jax.algorithms.policy_losses import surrogate_loss
from rlhf_jax.models import lora, moe
from rlhf_jax.training.core import guards
from rlhf_jax.training.core.logprobs import response_stats
from rlhf_jax.training.rl import packing as packing_lib
from rlhf_jax.training.rl.rl_config import RLConfig, Rollout


class Outputs(NamedTuple):
  """What the loss reads of the models (`loss_outputs`), per response token unless said."""
  logprobs: jax.Array  # [n, new] the policy's
  entropy: jax.Array  # [n, new]
  values: jax.Array  # [n, new] the critic's (0 with none)
  router_aux: Optional[jax.Array] = None  # an MoE policy's load-balancing loss, a scalar (None: dense)
  # An MoE policy given the sampler's experts: the share of each token's routing its live
  # router agrees with (moe.routing_agreement), [n, new]; logged, never differentiated.
  agreement: Optional[jax.Array] = None


def response_values(model, params, tokens, mask, prompt_len: int, segments=None):
  """V(s_t) for each response token t: the value head at the position before it."""
  out = model.apply({"params": params}, tokens, mask, segments=segments, with_logits=False)
  return out.scalars["value"][:, prompt_len - 1:-1]


def stats_and_values(params, tokens, mask, prompt_len: int, *, policy, critic, temperature: float, segments=None,
                     routed=None):
  """Response token statistics (log-probs, entropy at the temperature), values and the policy's
  routing (None: dense): one pass when the critic is shared, values 0 with none. Packed rows
  (`segments`): of every token after the first (prompt_len 1). `routed`: the policy's experts
  (router replay, [layers, n, time, k]); a separate critic routes live, it did not sample."""
  policy_params, value_params = params
  out = policy.apply({"params": policy_params}, tokens, mask, segments=segments, with_logits=False, routed=routed)
  stats = response_stats(policy, policy_params, out, tokens, prompt_len, temperature)
  if critic is not None:
    return stats, response_values(critic, value_params, tokens, mask, prompt_len, segments), out.router
  if "value" in out.scalars:  # the value head on the policy backbone
    return stats, out.scalars["value"][:, prompt_len - 1:-1], out.router
  return stats, jnp.zeros(stats.logprobs.shape, jnp.float32), out.router


def loss_outputs(params, tokens, mask, *, policy, critic, cfg: RLConfig, prompt_len: int, bases=(None, None),
                 segments=None, experts=None) -> Outputs:
  """What the loss reads of the models (`Outputs`) under the trainable `params` (policy, critic)
  on their frozen LoRA `bases` (rl_state.frozen_bases). `experts`: the sampler's, [n, layers,
  time, k] (an MoE policy's rollout): replayed with `cfg.router_replay` (R3: only the indices;
  the router's logits, softmax and gates stay live, so it still learns), and in any case
  compared with the live routing (`Outputs.agreement`)."""
  params = tuple(lora.combine(base, p) for base, p in zip(bases, params))
  routed = moe.replayed(experts) if cfg.router_replay and experts is not None else None
  stats, values, router = stats_and_values(params, tokens, mask, prompt_len, policy=policy, critic=critic,
                                           temperature=cfg.temperature, segments=segments, routed=routed)
  if router is None:
    return Outputs(stats.logprobs, stats.entropy, values)
  agreement = None if experts is None else jax.lax.stop_gradient(
      moe.routing_agreement(router, experts)[:, prompt_len:])
  return Outputs(stats.logprobs, stats.entropy, values, moe.load_balancing_loss(router, mask), agreement)


def rl_loss(params, batch, *, policy, critic, cfg: RLConfig, prompt_len: int, kl_coef, bases=(None, None)):
  """The loss of a (micro)batch of `(Rollout, (policy_weights, token_weights))`, differentiated
  in `params` (policy, critic): what trains, on the frozen LoRA `bases`."""
  rollout_batch = batch[0]
  outputs = loss_outputs(params, rollout_batch.tokens, rollout_batch.mask, policy=policy, critic=critic, cfg=cfg,
                         prompt_len=prompt_len, bases=bases, experts=rollout_batch.experts)
  return loss_of_outputs(outputs, batch, cfg=cfg, kl_coef=kl_coef, aux_coef=policy.cfg.router_aux_coef)


def loss_of_outputs(outputs, batch, *, cfg: RLConfig, kl_coef, aux_coef: float = 0.0):
  """`rl_loss` as a function of the models' outputs (`loss_outputs`: an `Outputs`, or its first
  three fields), plus `aux_coef` times an MoE policy's load-balancing loss, as pretraining and
  SFT add it (models/moe.py).

  Every term is a weighted sum over tokens with weights that sum to 1 over the minibatch, so
  microbatch losses add up to the minibatch's and gradient accumulation is exact; the
  load-balancing loss, a mean over the microbatch's tokens, counts 1 / accum_steps of it.
  """
  outputs = Outputs(*outputs)
  logprobs, entropy, values = outputs[:3]
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
  return moe.with_aux_loss(loss, metrics, outputs.router_aux, aux_coef, share=1.0 / cfg.accum_steps)


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


def minibatch_update(carry, minibatch, *, grad_fn, cfg: RLConfig, txs, rewards_ok):
  """One optimizer update of (policy, critic) on a minibatch of the rollout (a `lax.scan`
  step), its gradients from `grad_fn(params, (minibatch, weights))`: refused, carry unchanged,
  if its loss, gradients or the rollout's rewards are not finite."""
  response_mask = minibatch.loss_mask * minibatch.weights[:, None]
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


def packed_gradients(outputs_fn, prompt_len: int, rows: int, *, cfg: RLConfig, kl_coef):
  """`grad_fn` of a minibatch packed (packing.py) into microbatches of `rows` rows, looped over
  (`lax.while_loop`: as many as hold its trajectories) with the gradients summed: exactly the
  padded minibatch's, as each microbatch's loss is the minibatch's over the trajectories it
  holds (their weights are the minibatch's; the others read fixed outputs, `base`). Loss and
  metrics come from all the microbatches' outputs at the end. `outputs_fn(params, tokens,
  mask, segments)`: `loss_outputs` of packed rows. Trajectories with no weight are left out."""
  def grad_fn(params, batch):
    rollout_batch, weights = batch
    packing = packing_lib.pack(rollout_batch.tokens, rollout_batch.mask, jnp.any(weights[1] > 0, axis=1),
                               prompt_len, rows)
    # The per-token outputs only: an MoE policy's routing is not packed (router_replay.check refuses it).
    base = (rollout_batch.logprobs, jnp.zeros_like(rollout_batch.logprobs), rollout_batch.values)

    def microbatch_loss(params, j):
      packed = outputs_fn(params, *packing.microbatch(j))
      outputs = tuple(packing_lib.unpack(packing, j, p, b, prompt_len) for p, b in zip(packed, base))
      held = jax.tree.map(lambda w: w * packing.holds(j)[:, None], weights)
      return loss_of_outputs(outputs, (rollout_batch, held), cfg=cfg, kl_coef=kl_coef)[0], outputs

    def body(carry):
      j, grads, outputs = carry
      (_, new), microbatch_grads = jax.value_and_grad(microbatch_loss, has_aux=True)(params, j)
      outputs = tuple(jnp.where(packing.holds(j)[:, None], n, o) for n, o in zip(new, outputs))
      return j + 1, jax.tree.map(jnp.add, grads, microbatch_grads), outputs

    zeros = jax.tree.map(jnp.zeros_like, params)
    _, grads, outputs = jax.lax.while_loop(lambda c: c[0] < packing.count, body, (jnp.int32(0), zeros, base))
    loss, metrics = loss_of_outputs(outputs, batch, cfg=cfg, kl_coef=kl_coef)
    return grads, {"loss": loss, **metrics}
  return grad_fn


def pulled_back_gradients(outputs, pullback, *, cfg: RLConfig, kl_coef, aux_coef: float = 0.0):
  """`grad_fn` of the first update from the scoring pass's outputs and pullback
  (`scoring_pass`): the loss differentiated in the outputs, then pulled back to the params the
  pass ran at (which the first update's carry holds)."""
  def grad_fn(unused_params, batch):
    (loss, metrics), d_outputs = jax.value_and_grad(loss_of_outputs, has_aux=True)(outputs, batch, cfg=cfg,
                                                                                   kl_coef=kl_coef, aux_coef=aux_coef)
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
