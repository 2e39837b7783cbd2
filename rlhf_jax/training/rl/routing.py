"""What RL runs with on an MoE policy (models/moe.py), checked on the policy's own architecture
(the SFT run's, known once the upstream stages are done).

The load-balancing loss joins the policy loss and the sampler (static, continuous or paged
batching alike: models/continuous.py) records each token's experts, which `rl.router_replay`
replays in the trainer (R3) and `rollout/router_agreement` compares with the trainer's live
routing every iteration. The rollouts carry the experts in
their `Sampled` (batch first), so host rewards, off-policy queues and vmapped seeds carry them
too; what samples elsewhere (vLLM, multi-turn turns), or packs the rows, does not yet.
"""

from rlhf_jax import rl_plan
from rlhf_jax.errors import UserError
from rlhf_jax.models.config import ModelConfig


def check(cfg, plan: rl_plan.RLPlan, policy_cfg: ModelConfig) -> None:
  """UserError for router replay on a dense policy or with a sampler that records no experts,
  and for packed rows with an MoE policy."""
  rl = plan.fields
  if rl["router_replay"] and not policy_cfg.n_experts:
    raise UserError("rl.router_replay=True replays an MoE policy's experts, and this policy is dense "
                    "(model.n_experts=0): set rl.router_replay=False")
  if policy_cfg.n_experts and rl["packing"]:
    raise UserError("rl.packing with an MoE policy is not supported yet (the load-balancing loss and the routing "
                    "check read unpacked rows): set rl.packing=False")
  unsupported = (f"rollout.engine={plan.engine}" if plan.engine != "jax" else
                 "config.env (multi-turn)" if plan.driver == "multi_turn" else "")
  if rl["router_replay"] and unsupported:
    raise UserError(f"rl.router_replay with {unsupported} is not supported yet: only the JAX samplers record the "
                    "experts of one-turn responses (rollout.engine=jax, no config.env)")
