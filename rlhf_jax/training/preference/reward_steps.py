"""Compiled reward-model steps: Bradley-Terry training, pair eval and sequence scoring."""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlhf_jax import sharding
from rlhf_jax.algorithms.reward import bradley_terry_loss
from rlhf_jax.models import lora
from rlhf_jax.models.transformer import sequence_scalars
from rlhf_jax.training.core import guards
from rlhf_jax.training.core.state import TrainState, model_params
from rlhf_jax.training.core.steps import accumulate_gradients, apply_gradients, jit_sampler, jit_steps
from rlhf_jax.training.preference import pairs


sequence_rewards = sequence_scalars  # a reward model's score of each sequence (models/transformer.py)


def pair_rewards(params, batch, *, model, head: str = "reward"):
  """Rewards of chosen and rejected, [pairs] each, from one forward pass over both; packed rows
  (training/preference/pairs.py) are scored at each sequence's last token."""
  if not pairs.is_packed(batch):
    tokens = jnp.concatenate([batch["chosen"], batch["rejected"]])
    mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]])
    return jnp.split(sequence_rewards(params, tokens, mask, model=model, head=head), 2)
  ends = pairs.segment_ends(batch["segments"], pairs.segment_count(batch))
  out = model.apply({"params": params}, batch["tokens"], batch["mask"], **pairs.packed_layout(batch),
                    query_index=ends, with_logits=False)
  return pairs.chosen_and_rejected(out.scalars[head])


def pair_sums(chosen, rejected, weight, label=None) -> dict:
  """Bradley-Terry NLL (against soft labels where given), correct rankings, margins and pairs,
  summed over the weighted pairs."""
  label = jnp.ones_like(chosen) if label is None else label
  per_pair = jax.vmap(bradley_terry_loss)(chosen[:, None], rejected[:, None], label[:, None])
  return {"correct": jnp.sum((chosen > rejected) * weight), "margin": jnp.sum((chosen - rejected) * weight),
          "pairs": jnp.sum(weight), "nll": jnp.sum(per_pair * weight)}


def pair_loss(params, batch, normalizer, *, model):
  sums = pair_sums(*pair_rewards(params, batch, model=model), pairs.pair_weights(batch), pairs.pair_labels(batch))
  return sums["nll"] / normalizer, sums


def reward_train_step(state: TrainState, batch: dict, *, model, tx, schedule, accum_steps: int,
                      inject_nan_at: tuple = ()):
  normalizer = jnp.maximum(batch["loss_mask"].sum(), 1).astype(jnp.float32)
  loss_fn = lora.on_base(functools.partial(pair_loss, normalizer=normalizer, model=model), state.frozen)
  loss_fn = guards.with_injected_nan(loss_fn, state.step, inject_nan_at)
  grads, sums = accumulate_gradients(loss_fn, state.params, batch, accum_steps)
  count = jnp.maximum(sums["pairs"], 1)
  metrics = {"loss": sums["loss"], "accuracy": sums["correct"] / count, "margin": sums["margin"] / count,
             "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step)}
  state, flags = apply_gradients(state, grads, tx, sums["loss"])
  return state, {**metrics, **flags}


def reward_eval_step(params, batch: dict, *, model):
  """Summed pair metrics, both rewards (for normalisation and the gold correlation) and which
  rows are real pairs: all of the global batch, which no one process holds on the host."""
  chosen, rejected = pair_rewards(params, batch, model=model)
  weight = pairs.pair_weights(batch)
  return pair_sums(chosen, rejected, weight, pairs.pair_labels(batch)), chosen, rejected, weight > 0


class RewardSteps(NamedTuple):
  train: Callable
  eval: Callable
  sample: Callable  # the starting policy's sampler, for generated preference pairs


def compile_reward_steps(model, policy, tx, schedule, state_shardings, mesh, cfg, tokenizer) -> RewardSteps:
  train_fn = functools.partial(reward_train_step, model=model, tx=tx, schedule=schedule,
                               accum_steps=cfg.optim.accum_steps, inject_nan_at=tuple(cfg.train.inject_nan_at))
  rules = sharding.rules_of(cfg)
  eval_fn = functools.partial(reward_eval_step, model=model)
  train, evaluate = jit_steps(train_fn, eval_fn, state_shardings, mesh, rules)
  sampler = jit_sampler(policy, cfg.preference.max_new_tokens, tokenizer, model_params(state_shardings), mesh,
                        rules, cfg.get("sample"))
  return RewardSteps(train, evaluate, sampler)
