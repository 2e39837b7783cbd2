"""DPO's compiled steps: the policy against the frozen reference on preference pairs.

The state is a `PolicyState` (training/policy/policy_state.py): the policy and its optimizer
state, the frozen reference and reward model. The reference's log-probs are computed in the step,
outside the differentiated function, so no gradient reaches it; a reference-free loss
(`algorithms/dpo.py`: SimPO) skips that forward pass.
"""

import functools

import jax.numpy as jnp
import optax

from rlhf_jax import sharding
from rlhf_jax.algorithms import dpo
from rlhf_jax.algorithms.masked import masked_sum
from rlhf_jax.models import lora, moe
from rlhf_jax.models.head import next_token_stats
from rlhf_jax.training.core import guards
from rlhf_jax.training.core.steps import accumulate_gradients, jit_steps
from rlhf_jax.training.policy.policy_state import PolicyState, policy_base, policy_params
from rlhf_jax.training.preference import pairs


def pair_forward(model, params, batch):
  """(chosen, rejected) response log-probs, [pairs] each, from one forward pass over both, and that
  pass's routing (`ModelOutput.router`, None for a dense model) with the mask of its real tokens,
  which the load-balancing loss averages over. In packed rows (training/preference/pairs.py) the
  log-probs are summed per sequence (a shared prompt is no response token) and the mask's pads
  are 0, so the loss covers the same real tokens as one pair per row (a shared prompt once)."""
  if pairs.is_packed(batch):
    tokens, mask, response = batch["tokens"], batch["mask"], batch["response"]
    out = model.apply({"params": params}, tokens, mask, **pairs.packed_layout(batch), with_logits=False)
    logprobs = next_token_stats(model, params, out.hidden, tokens, 1).logprobs
    return (*packed_sums(batch, logprobs * response[:, 1:]), out.router, mask)
  tokens, mask, response = (jnp.concatenate([batch[f"chosen{k}"], batch[f"rejected{k}"]])
                            for k in ("", "_mask", "_response"))
  out = model.apply({"params": params}, tokens, mask, with_logits=False)
  logps = masked_sum(next_token_stats(model, params, out.hidden, tokens, 1).logprobs, response[:, 1:], axis=1)
  return (*jnp.split(logps, 2), out.router, mask)


def pair_logps(model, params, batch):
  """(chosen, rejected) response log-probs, [pairs] each: `pair_forward`'s."""
  return tuple(pair_forward(model, params, batch)[:2])


def packed_sums(batch, per_target):
  """(chosen, rejected) sums of per-target values [rows, time - 1], each target in its own
  sequence: a response target's input is in the same sequence (its BOS and prompt come first)."""
  per_segment = pairs.segment_sums(per_target, batch["segments"][:, 1:], pairs.segment_count(batch))
  return pairs.chosen_and_rejected(per_segment)


def pair_lengths(batch):
  """(chosen, rejected) response token counts (the response and its EOS), [pairs] each."""
  if pairs.is_packed(batch):
    return packed_sums(batch, batch["response"][:, 1:])
  count = lambda name: jnp.sum(batch[f"{name}_response"][:, 1:], axis=1).astype(jnp.float32)
  return count("chosen"), count("rejected")


def pair_loss(params, batch, *, model, cfg, normalizer, router_aux: bool = False):
  """Summed pair metrics; the loss is their mean over the whole batch's `normalizer` pairs. With
  `router_aux` (training an MoE policy: `moe.router_aux_applies`), plus router_aux_coef times the
  load-balancing loss of the policy's pass over chosen and rejected, as SFT and TRL's DPOTrainer
  add it; the frozen reference's pass adds none."""
  chosen, rejected, router, mask = pair_forward(model, params, batch)
  inputs = dpo.PreferenceInputs(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], *pair_lengths(batch))
  h = dpo.logratio_margin(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"])
  weight = pairs.pair_weights(batch)
  hp = preference_params(cfg)
  if cfg.get("soft_labels"):  # each pair's flip rate: 1 - its judge's probability (conservative DPO)
    hp = hp._replace(label_smoothing=1.0 - pairs.pair_labels(batch))
  losses = dpo.preference_losses(inputs, cfg.loss, hp)
  sums = {"nll": jnp.sum(losses * weight), "correct": jnp.sum((h > 0) * weight), "pairs": jnp.sum(weight),
          "margin": jnp.sum(cfg.beta * h * weight),
          "chosen_reward": jnp.sum(cfg.beta * (chosen - batch["ref_chosen"]) * weight),
          "rejected_reward": jnp.sum(cfg.beta * (rejected - batch["ref_rejected"]) * weight)}
  return pairs.mean_loss(sums, normalizer, router, mask, model.cfg, router_aux)


def preference_params(cfg) -> dpo.PreferenceParams:
  return dpo.PreferenceParams(cfg.beta, cfg.label_smoothing, cfg.gamma, cfg.length_normalise)


def with_reference(state: PolicyState, batch, model, cfg):
  """The batch with the reference's log-probs; zeros, and no forward pass, for a reference-free loss
  (its margins and implicit rewards are then the policy's own)."""
  if dpo.PREFERENCE_LOSSES[cfg.loss].needs_reference:
    ref_chosen, ref_rejected = pair_logps(model, state.ref, batch)
  else:
    ref_chosen = ref_rejected = jnp.zeros(pairs.pair_weights(batch).shape, jnp.float32)
  return {**batch, "ref_chosen": ref_chosen, "ref_rejected": ref_rejected}


def averages(sums) -> dict:
  """Per-pair means: accuracy (h > 0), beta * margin, implicit rewards of chosen and rejected."""
  pairs = jnp.maximum(sums["pairs"], 1.0)
  return {"loss": sums["nll"] / pairs, "accuracy": sums["correct"] / pairs, "margin": sums["margin"] / pairs,
          "chosen_reward": sums["chosen_reward"] / pairs, "rejected_reward": sums["rejected_reward"] / pairs}


def train_metrics(sums) -> dict:
  """`averages`; where the policy's load-balancing loss was added, `loss` is the one optimised (the
  preference loss plus router_aux_coef x `router_aux_loss`), as SFT logs it."""
  aux = moe.aux_metrics(sums)
  return {**averages(sums), **({"loss": sums["loss"]} if aux else {}), **aux}


def dpo_train_step(state: PolicyState, batch: dict, *, model, tx, cfg, accum_steps: int, inject_nan_at: tuple = ()):
  batch = with_reference(state, batch, model, cfg)
  normalizer = jnp.maximum(jnp.sum(pairs.pair_weights(batch)), 1)
  loss_fn = lora.on_base(functools.partial(pair_loss, model=model, cfg=cfg, normalizer=normalizer,
                                           router_aux=moe.router_aux_applies(model.cfg)), policy_base(state))
  loss_fn = guards.with_injected_nan(loss_fn, state.step, inject_nan_at)
  grads, sums = accumulate_gradients(loss_fn, state.policy, batch, accum_steps)
  ok, flags = guards.check(loss=sums["loss"], grads=grads)
  policy, policy_opt = guards.guarded_update(tx, grads, state.policy_opt, state.policy, ok)
  state = state.replace(step=state.step + 1, policy=policy, policy_opt=policy_opt)
  return state, {**train_metrics(sums), "grad_norm": optax.tree.norm(grads), **flags}


def dpo_eval_step(state: PolicyState, batch: dict, *, model, cfg) -> dict:
  """Summed metrics of held-out pairs, so the host averages exactly over batches."""
  batch = with_reference(state, batch, model, cfg)
  return pair_loss(policy_params(state), batch, model=model, cfg=cfg, normalizer=1.0)[1]


def compile_dpo_steps(model, tx, cfg, state_shardings, mesh):
  """(train, eval), jitted once by `jit_steps`; the eval step takes the whole state (policy and reference)."""
  train_fn = functools.partial(dpo_train_step, model=model, tx=tx, cfg=cfg.dpo, accum_steps=cfg.optim.accum_steps,
                               inject_nan_at=tuple(cfg.train.inject_nan_at))
  eval_fn = functools.partial(dpo_eval_step, model=model, cfg=cfg.dpo)
  return jit_steps(train_fn, eval_fn, state_shardings, mesh, sharding.rules_of(cfg), eval_shardings=state_shardings)
