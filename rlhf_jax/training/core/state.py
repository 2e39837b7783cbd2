"""The training state: one pytree, so it jits, shards and checkpoints as a whole."""

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax

from rlhf_jax import sharding
from rlhf_jax.models import lora
from rlhf_jax.models.transformer import boxed_params


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates done (= batches consumed)
  params: Any  # what trains: every weight, or with LoRA the adapters and scalar heads
  opt_state: Any  # of `params` only
  frozen: Any = None  # with LoRA the frozen base (never differentiated, never checkpointed); else None


def model_params(state):
  """The params the model applies: `params` on the frozen base (a TrainState, or its shardings)."""
  return lora.combine(state.frozen, state.params)


def place(models: dict, build: Callable, mesh, rules, seed: int, load=None):
  """A state laid out on `mesh`, shape-first: its shardings come from its abstract shape (params
  carry logical axis names; counters and the rng are replicated), and one jitted function
  assembles it from the params straight into them. `build(**params)` is the state around the
  named models' params; `load(name, fresh, shardings)` replaces fresh params by loaded ones.
  Returns (state, shardings)."""
  rng = jax.random.key(seed)
  boxed = {name: jax.eval_shape(functools.partial(boxed_params, model), rng) for name, model in models.items()}
  shardings = sharding.logical_shardings(jax.eval_shape(build, **boxed), mesh, rules)

  def params(name):  # a model's whole params (with LoRA, the state keeps its adapters and heads)
    where = sharding.logical_shardings(boxed[name], mesh, rules)
    fresh = jax.jit(lambda r: nn.meta.unbox(boxed_params(models[name], r)), out_shardings=where)(rng)
    return load(name, fresh, where) if load else fresh

  return jax.jit(build, out_shardings=shardings)(**{name: params(name) for name in models}), shardings
