"""The training state: one pytree, so it jits, shards and checkpoints as a whole."""

from typing import Any

import flax
import jax

from rlhf_jax.models import lora


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates done (= batches consumed)
  params: Any  # what trains: every weight, or with LoRA the adapters and scalar heads
  opt_state: Any  # of `params` only
  frozen: Any = None  # with LoRA the frozen base (never differentiated, never checkpointed); else None


def model_params(state):
  """The params the model applies: `params` on the frozen base (a TrainState, or its shardings)."""
  return lora.combine(state.frozen, state.params)
