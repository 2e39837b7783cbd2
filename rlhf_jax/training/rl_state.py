"""The RL state: every parameter set of an RLHF run in one pytree.

Trainable: the policy and the critic, each with its optimizer state (no critic: None for a
value head on the policy backbone or a critic-free method). Frozen: the reference policy (for
the KL penalty) and the reward model: plain arrays with no optimizer state, never
differentiated, so updates cannot touch them. Also the KL controller, REINFORCE's
moving-average baseline, the rng and the iteration count, so the whole future of a run is in
the state.
"""

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from rlhf_jax import sharding
from rlhf_jax.algorithms.kl import KLControllerState, init_kl_controller
from rlhf_jax.models.transformer import boxed_params


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


def place_state(models: dict, policy_tx, value_tx, mesh, rules, seed: int, kl_coef: float, load=None):
  """An RLState laid out on `mesh`, shape-first: its shardings come from its abstract shape
  (params carry logical axis names; counters, the KL controller and the rng are replicated),
  and one jitted function assembles it from the params straight into them.

  `models` names the policy, reward and (optional) value models; `load(name, fresh, shardings)`
  replaces freshly initialised params by loaded ones. Returns (state, shardings).
  """
  rng = jax.random.key(seed)
  boxed = {name: jax.eval_shape(functools.partial(boxed_params, model), rng) for name, model in models.items()}
  build = functools.partial(assemble_state, policy_tx=policy_tx, value_tx=value_tx, kl_coef=kl_coef, seed=seed)
  shardings = sharding.logical_shardings(jax.eval_shape(build, **boxed), mesh, rules)

  def params(name):
    where = getattr(shardings, name)
    fresh = jax.jit(lambda r: nn.meta.unbox(boxed_params(models[name], r)), out_shardings=where)(rng)
    return load(name, fresh, where) if load else fresh

  return jax.jit(build, out_shardings=shardings)(**{name: params(name) for name in models}), shardings


def assemble_state(policy, reward=None, value=None, *, policy_tx, value_tx, kl_coef: float, seed: int) -> RLState:
  """The RL state around its params: fresh optimizer states, the reference a copy of the policy."""
  return RLState(step=jnp.zeros((), jnp.int32), policy=policy, policy_opt=policy_tx.init(policy), value=value,
                 value_opt=value_tx.init(value) if value_tx else None, ref=jax.tree.map(jnp.copy, policy),
                 reward=reward, kl=init_kl_controller(kl_coef), baseline=jnp.zeros((), jnp.float32),
                 rng=jax.random.PRNGKey(seed))
