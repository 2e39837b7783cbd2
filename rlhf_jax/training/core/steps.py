"""Pure training and eval steps for pretraining and SFT: (state, batch) -> (state, metrics).

`compile_lm_steps` is the one place they are jitted, with shardings and a donated state.
"""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlhf_jax import sharding
from rlhf_jax.algorithms.lm import weighted_nll
from rlhf_jax.models import lora, moe
from rlhf_jax.models.head import model_token_stats
from rlhf_jax.models.continuous import batching_of, generate
from rlhf_jax.training.core import guards
from rlhf_jax.training.core.state import TrainState, model_params


def next_token_loss_of(model, params, batch: dict, normalizer=None, router_aux: bool = False, **apply_kwargs):
  """`algorithms.lm`'s weighted cross-entropy of the batch's targets, the LM head read a chunk at a
  time (models/head.py); packed rows carry `segments`. With `router_aux` (training), an MoE model's
  load-balancing loss is added (models/moe.py). Returns (loss, summed metrics)."""
  out = model.apply({"params": params}, batch["inputs"], batch["mask"], segments=batch.get("segments"),
                    with_logits=False, **apply_kwargs)
  stats = model_token_stats(model, params, out.hidden, batch["targets"])
  loss, metrics = weighted_nll(stats.logprobs, stats.correct, batch["loss_mask"], normalizer)
  if not router_aux:
    return loss, metrics
  share = jnp.sum(batch["loss_mask"]) / normalizer  # this microbatch's part of the batch's tokens
  return moe.with_router_aux(loss, metrics, out.router, batch["mask"], model.cfg.router_aux_coef, share)


def lm_loss(params, batch, normalizer, *, model, dropout_rng):
  return next_token_loss_of(model, params, batch, normalizer, router_aux=True, rngs={"dropout": dropout_rng})


def accumulate_gradients(loss_fn: Callable, params, batch, accum_steps: int):
  """Gradients of the full-batch loss, computed over `accum_steps` microbatches in a scan.

  loss_fn(params, microbatch) -> (loss, metrics) must sum over its examples with weights
  fixed by the whole batch (e.g. divide by its token count), so the summed microbatch losses
  and gradients equal the full-batch ones. Metrics named `max_*` are maxima, not sums.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    (loss, metrics), grads = grad_fn(params, batch)
    return grads, {"loss": loss, **metrics}
  micro = jax.tree.map(lambda x: x.reshape(accum_steps, -1, *x.shape[1:]), batch)

  def add(total, microbatch):
    (loss, metrics), grads = grad_fn(params, microbatch)
    total_grads, totals = total
    metrics = {"loss": loss, **metrics}
    # Sums add up to the whole batch's; a `max_*` metric is the largest over the microbatches.
    combined = {k: (jnp.maximum if k.startswith("max_") else jnp.add)(totals[k], v) for k, v in metrics.items()}
    return (jax.tree.map(jnp.add, total_grads, grads), combined), None

  first = jax.tree.map(lambda x: x[0], micro)
  (loss, metrics), grads = jax.eval_shape(grad_fn, params, first)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (grads, {"loss": loss, **metrics}))
  (grads, metrics), _ = jax.lax.scan(add, zeros, micro)
  return grads, metrics


def train_step(state: TrainState, batch: dict, *, model, tx, schedule, accum_steps: int, seed: int,
               inject_nan_at: tuple = ()):
  dropout_rng = jax.random.fold_in(jax.random.key(seed), state.step)
  normalizer = jnp.maximum(batch["loss_mask"].sum(), 1).astype(jnp.float32)
  loss_fn = lora.on_base(functools.partial(lm_loss, normalizer=normalizer, model=model, dropout_rng=dropout_rng),
                         state.frozen)
  loss_fn = guards.with_injected_nan(loss_fn, state.step, inject_nan_at)
  grads, sums = accumulate_gradients(loss_fn, state.params, batch, accum_steps)
  metrics = {"loss": sums["loss"], "accuracy": sums["correct"] / jnp.maximum(sums["tokens"], 1),
             "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step),
             "tokens": sums["tokens"], **moe.aux_metrics(sums)}
  state, flags = apply_gradients(state, grads, tx, sums["loss"])
  return state, {**metrics, **flags}


def apply_gradients(state: TrainState, grads, tx, loss) -> tuple[TrainState, dict]:
  """The optimizer's update, applied only if the loss and the gradients are finite (`guards`);
  the step counts either way. Returns (state, guard metrics)."""
  ok, flags = guards.check(loss=loss, grads=grads)
  params, opt_state = guards.guarded_update(tx, grads, state.opt_state, state.params, ok)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), flags


def eval_step(params, batch: dict, *, model) -> dict:
  """Summed nll / correct / tokens, so the host averages exactly over any number of batches."""
  return next_token_loss_of(model, params, batch)[1]


class LMSteps(NamedTuple):
  train: Callable  # (state, batch) -> (state, metrics)
  eval: Callable  # (params, batch) -> summed metrics
  sample: Callable  # (params, prompts, prompt_mask, rng, SamplingParams) -> SampleOutput


def jit_steps(train_fn, eval_fn, state_shardings, mesh, rules, eval_shardings=None):
  """The one place train and eval steps are jitted: batches split over the data axes,
  metrics replicated, the state donated (updated in place). The eval step takes the model's
  params (`model_params`) unless `eval_shardings` says otherwise (DPO's takes the state)."""
  data, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  train = jax.jit(sharding.with_rules(train_fn, mesh, rules), in_shardings=(state_shardings, data),
                  out_shardings=(state_shardings, repl), donate_argnums=0)
  eval_shardings = model_params(state_shardings) if eval_shardings is None else eval_shardings
  evaluate = jax.jit(sharding.with_rules(eval_fn, mesh, rules), in_shardings=(eval_shardings, data),
                     out_shardings=repl)
  return train, evaluate


def jit_sampler(model, max_new_tokens: int, tokenizer, param_shardings, mesh, rules, sample_cfg=None):
  """(params, prompts, prompt_mask, rng, SamplingParams) -> SampleOutput, compiled once: the
  params as laid out for training, the prompts as given, the samples replicated (every
  process decodes them). `sample_cfg`: the config's `sample` (its batching and slots)."""
  fn = functools.partial(generate, model, max_new_tokens=max_new_tokens, stop_ids=tokenizer.stop_ids,
                         pad_id=tokenizer.pad_id, **batching_of(sample_cfg))
  return jax.jit(sharding.with_rules(fn, mesh, rules), in_shardings=(param_shardings, None, None, None, None),
                 out_shardings=sharding.replicated(mesh))


def compile_lm_steps(model, tx, schedule, state_shardings, mesh, cfg, tokenizer) -> LMSteps:
  train_model = model.clone(deterministic=cfg.model.dropout == 0)
  train_fn = functools.partial(train_step, model=train_model, tx=tx, schedule=schedule,
                               accum_steps=cfg.optim.accum_steps, seed=cfg.seed,
                               inject_nan_at=tuple(cfg.train.inject_nan_at))
  rules = sharding.rules_of(cfg)
  train, evaluate = jit_steps(train_fn, functools.partial(eval_step, model=model), state_shardings, mesh, rules)
  sampler = jit_sampler(model, cfg.sample.max_new_tokens, tokenizer, model_params(state_shardings), mesh, rules,
                        cfg.sample)
  return LMSteps(train, evaluate, sampler)
