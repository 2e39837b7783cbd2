"""The training state: one pytree, so it jits, shards and checkpoints as a whole."""

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates done (= batches consumed)
  params: Any
  opt_state: Any
