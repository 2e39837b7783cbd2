"""The RL state: every parameter set of an RLHF run in one pytree.

Trainable: the policy and the critic, each with its optimizer state (no critic: None for a
value head on the policy backbone or a critic-free method). Frozen: the reference policy (for
the KL penalty) and the reward model: plain arrays with no optimizer state, never
differentiated, so updates cannot touch them. Also the KL controller, REINFORCE's
moving-average baseline, the rng, the iteration count and, off-policy, the rollouts sampled
but not yet trained on, so the whole future of a run is in the state.

With LoRA (models/lora.py) `policy` holds the adapters and heads only, and `ref` is the frozen
base they sit on: the reference policy is the base with the adapters off, held once. A LoRA
critic's adapters sit on a frozen part already in the state (`value_base`: the reference, for
a critic from SFT, or the reward model), so no base is held twice.
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp

from rlhf_jax.algorithms.kl import KLControllerState, init_kl_controller
from rlhf_jax.models import lora
from rlhf_jax.training.core import state as state_lib
from rlhf_jax.training.policy.policy_state import split_reference


@flax.struct.dataclass
class RLState:
  step: jax.Array  # int32 scalar: PPO iterations done
  policy: Any
  policy_opt: Any
  value: Any
  value_opt: Any
  ref: Any  # frozen
  reward: Any  # frozen (None: no reward model among the rewards)
  kl: KLControllerState
  baseline: jax.Array  # float32 scalar: moving average of returns (REINFORCE)
  rng: jax.Array
  pending: Any = None  # off-policy: the K rollouts in flight, oldest first (training/rl/off_policy.py)
  lora: bool = flax.struct.field(pytree_node=False, default=False)  # policy: adapters on `ref`
  value_base: str | None = flax.struct.field(pytree_node=False, default=None)  # "ref" / "reward": the critic's


def value_params(state):
  """The critic's params as the model applies them (None without a separate critic)."""
  return lora.combine(getattr(state, state.value_base), state.value) if state.value_base else state.value


def frozen_bases(state) -> tuple:
  """(policy base, critic base): what the trainable params sit on (None: nothing, full fine-tuning)."""
  return (state.ref if state.lora else None, getattr(state, state.value_base) if state.value_base else None)


def place_state(models: dict, policy_tx, value_tx, mesh, rules, seed: int, kl_coef: float, load=None,
                value_base=None):
  """An RLState laid out on `mesh` (core/state.place): `models` names the policy, reward and
  (optional) value models; `value_base` the frozen part a LoRA critic sits on. Returns (state, shardings)."""
  build = functools.partial(assemble_state, policy_tx=policy_tx, value_tx=value_tx, kl_coef=kl_coef, seed=seed,
                            value_base=value_base)
  return state_lib.place(models, build, mesh, rules, seed, load)


def assemble_state(policy, reward=None, value=None, *, policy_tx, value_tx, kl_coef: float, seed: int,
                   value_base=None) -> RLState:
  """The RL state around its params: fresh optimizer states for what trains; the reference a copy
  of the policy, or with LoRA the policy's base itself (the critic's base is `value_base`'s)."""
  policy, ref, with_adapters = split_reference(policy)
  if value is not None and lora.has_adapters(value):
    value, _ = lora.split(value)  # its base is the reference's or the reward model's weights
  else:
    value_base = None
  return RLState(step=jnp.zeros((), jnp.int32), policy=policy, policy_opt=policy_tx.init(policy), value=value,
                 value_opt=value_tx.init(value) if value_tx else None, ref=ref,
                 reward=reward, kl=init_kl_controller(kl_coef), baseline=jnp.zeros((), jnp.float32),
                 rng=jax.random.PRNGKey(seed), lora=with_adapters, value_base=value_base)
