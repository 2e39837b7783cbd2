"""Compiled reward-model steps: Bradley-Terry training, pair eval and sequence scoring."""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlhf_jax import sharding
from rlhf_jax.algorithms.reward import bradley_terry_loss
from rlhf_jax.models import lora, moe
from rlhf_jax.models.transformer import last_token_index
from rlhf_jax.training.core import guards
from rlhf_jax.training.core.state import TrainState, model_params
from rlhf_jax.training.core.steps import accumulate_gradients, apply_gradients, jit_sampler, jit_steps
from rlhf_jax.training.preference import pairs


def pair_rewards(params, batch, *, model, head: str = "reward"):
  """Rewards of chosen and rejected, [pairs] each, from one forward pass over both: `pair_scores`'."""
  return pair_scores(params, batch, model=model, head=head)[:2]


def pair_scores(params, batch, *, model, head: str = "reward", full_routing: bool = False):
  """(chosen, rejected) rewards, [pairs] each, each sequence scored at its last token (packed rows:
  training/preference/pairs.py), from one forward pass over both; and that pass's routing (None
  for a dense model) with the mask of its real tokens, the load-balancing loss's input."""
  if pairs.is_packed(batch):
    tokens, mask, layout = batch["tokens"], batch["mask"], pairs.packed_layout(batch)
    query_index = pairs.segment_ends(batch["segments"], pairs.segment_count(batch))
  else:
    tokens = jnp.concatenate([batch["chosen"], batch["rejected"]])
    mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]])
    layout, query_index = {}, last_token_index(mask)[:, None]
  scores, router = scores_at(params, tokens, mask, query_index, model=model, head=head, full_routing=full_routing,
                             **layout)
  if pairs.is_packed(batch):
    return (*pairs.chosen_and_rejected(scores), router, mask)
  return (*jnp.split(scores[:, 0], 2), router, mask)


def scores_at(params, tokens, mask, query_index, *, model, head: str, full_routing: bool, **layout):
  """The scalar head at `query_index` [batch, n] and the forward pass's routing.

  By default the last block runs on the n scored tokens alone (exact, and a block's work less),
  so its routing covers only them. `full_routing` runs every block on every token and reads the
  scores after. The load-balancing loss needs that: the last layer's routing of n tokens does not
  stack with the other layers' of every token; pooled anyway, that layer would count n / time as
  much as the others, and left out, its router would get no balancing gradient though it routes
  every scored token. Run whole, the loss is the one Hugging Face and SFT compute on the same
  sequences, so router_aux_coef means the same in every stage; it costs one block's queries and
  MLP over every token, only when the loss is on."""
  out = model.apply({"params": params}, tokens, mask, **layout, query_index=None if full_routing else query_index,
                    with_logits=False)
  scores = out.scalars[head]
  return (jnp.take_along_axis(scores, query_index, axis=1) if full_routing else scores), out.router


def pair_sums(chosen, rejected, weight, label=None) -> dict:
  """Bradley-Terry NLL (against soft labels where given), correct rankings, margins and pairs,
  summed over the weighted pairs."""
  label = jnp.ones_like(chosen) if label is None else label
  per_pair = jax.vmap(bradley_terry_loss)(chosen[:, None], rejected[:, None], label[:, None])
  return {"correct": jnp.sum((chosen > rejected) * weight), "margin": jnp.sum((chosen - rejected) * weight),
          "pairs": jnp.sum(weight), "nll": jnp.sum(per_pair * weight)}


def pair_loss(params, batch, normalizer, *, model, router_aux: bool = False):
  """Summed pair metrics; the loss is the Bradley-Terry NLL over the whole batch's `normalizer`
  pairs. With `router_aux` (training an MoE reward model: `moe.router_aux_applies`), plus
  router_aux_coef times the load-balancing loss of its pass over chosen and rejected, as SFT's."""
  chosen, rejected, router, mask = pair_scores(params, batch, model=model, full_routing=router_aux)
  sums = pair_sums(chosen, rejected, pairs.pair_weights(batch), pairs.pair_labels(batch))
  return pairs.mean_loss(sums, normalizer, router, mask, model.cfg, router_aux)


def reward_train_step(state: TrainState, batch: dict, *, model, tx, schedule, accum_steps: int,
                      inject_nan_at: tuple = ()):
  normalizer = jnp.maximum(batch["loss_mask"].sum(), 1).astype(jnp.float32)
  loss_fn = lora.on_base(functools.partial(pair_loss, normalizer=normalizer, model=model,
                                           router_aux=moe.router_aux_applies(model.cfg)), state.frozen)
  loss_fn = guards.with_injected_nan(loss_fn, state.step, inject_nan_at)
  grads, sums = accumulate_gradients(loss_fn, state.params, batch, accum_steps)
  count = jnp.maximum(sums["pairs"], 1)
  metrics = {"loss": sums["loss"], "accuracy": sums["correct"] / count, "margin": sums["margin"] / count,
             "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step), **moe.aux_metrics(sums)}
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
