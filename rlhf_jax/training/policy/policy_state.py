"""The state of a policy trained without RL (DPO) or only sampled (best-of-n): the policy and its
optimizer state beside the frozen reference and reward model, in one pytree.

With LoRA (models/lora.py) `policy` holds the adapters and heads only and `ref` is the frozen base
they sit on, as in the RL state (training/rl/rl_state.py), which names its parts alike: the
helpers below read either state.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp

from rlhf_jax.models import lora


@flax.struct.dataclass
class PolicyState:
  step: jax.Array  # int32 scalar: updates done
  policy: Any  # what trains: every weight, or with LoRA its adapters and heads
  policy_opt: Any
  ref: Any  # frozen: the reference policy (with LoRA, the policy's base)
  reward: Any  # frozen: the reward model that scores samples
  rng: jax.Array
  lora: bool = flax.struct.field(pytree_node=False, default=False)  # policy: adapters on `ref`


def policy_params(state):
  """The policy's params as the model applies them (a policy or RL state, or its shardings)."""
  return lora.combine(state.ref, state.policy) if state.lora else state.policy


def reference_params(state):
  """The reference laid out as the policy's params: with LoRA its base with zero adapters and
  heads, whose outputs are exactly the base's (so the policy's compiled sampler takes it)."""
  return lora.combine(state.ref, jax.tree.map(jnp.zeros_like, state.policy)) if state.lora else state.ref


def policy_base(state):
  """What the policy's trainable params sit on: the frozen base with LoRA, else None."""
  return state.ref if state.lora else None


def split_reference(policy) -> tuple:
  """(what trains, the reference): a copy of the policy, or with LoRA its adapters and its base."""
  with_adapters = lora.has_adapters(policy)
  return (*(lora.split(policy) if with_adapters else (policy, jax.tree.map(jnp.copy, policy))), with_adapters)


def assemble_policy_state(policy, reward=None, *, tx, seed: int) -> PolicyState:
  """The state around its params: a fresh optimizer state for the policy, the reference split off."""
  policy, ref, with_adapters = split_reference(policy)
  return PolicyState(step=jnp.zeros((), jnp.int32), policy=policy, policy_opt=tx.init(policy), ref=ref,
                     reward=reward, rng=jax.random.PRNGKey(seed), lora=with_adapters)
