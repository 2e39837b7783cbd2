"""The RL state: every parameter set of an RLHF run in one pytree.

Trainable: the policy and the critic, each with its optimizer state (no critic: None for a
value head on the policy backbone or a critic-free method). Frozen: the reference policy (for
the KL penalty) and the reward model: plain arrays with no optimizer state, never
differentiated, so updates cannot touch them. Also the KL controller, REINFORCE's
moving-average baseline, the rng and the iteration count, so the whole future of a run is in
the state.
"""

from typing import Any

import flax
import jax

from rlhf_jax.algorithms.kl import KLControllerState


@flax.struct.dataclass
class RLState:
  step: jax.Array  # int32 scalar: PPO iterations done
  policy: Any
  policy_opt: Any
  value: Any
  value_opt: Any
  ref: Any  # frozen
  reward: Any  # frozen
  kl: KLControllerState
  baseline: jax.Array  # float32 scalar: moving average of returns (REINFORCE)
  rng: jax.Array
