"""Router replay (R3) on the tiny MoE: GRPO on the embedded sentiment task with the trainer
routing live against replaying the sampler's experts (rl.router_replay), 3 seeds each.

  python -m rlhf_jax.sweep --sweep=experiments/moe_replay.py --root=runs/moe_replay
  python -m rlhf_jax.aggregate --root=runs/moe_replay --compare=grpo_replay:grpo_live

One shared upstream (pretrain -> SFT -> reward model of the tiny pipeline on the `tiny_moe`
model: 4 experts, top-2, the load-balancing loss at 0.01), so both arms start from the same SFT
policy and optimise the same reward model. GRPO at lr 1e-4 as the showcase's, 16 prompts x 4
samples for 20 iterations, made off-policy so that the sampler's routing and the trainer's
differ: the sampler one iteration behind (rl.off_policy_steps=1, stale tokens weighted by
truncated importance sampling as in experiments/off_policy.py), and 2 epochs of 4 minibatches
per rollout, the later ones on a policy that has moved further. (Synchronous, with one model
sampling and scoring under the same params, the routing agrees on every assignment and replay
changes nothing: a first run of this sweep logged rollout/router_agreement 1.0 throughout.)
Seeds change sampling, the prompt order and the evaluation's draws, not the upstream.
"""

from rlhf_jax.sweep import Run, Sweep, grid

SEEDS = [0, 1, 2]
FROM_UPSTREAM = {"init_from": "{upstream}/sft", "reward_from": "{upstream}/reward", "algo": "grpo",
                 "optim.lr": 1e-4, "rl.epochs": 2, "rl.minibatches": 4, "rl.off_policy_steps": 1,
                 "rl.is_correction": "tis"}
ARMS = {"live": False, "replay": True}


def get_sweep() -> Sweep:
  upstream = Run("upstream", "configs/pipeline.py:tiny_moe", {"stages": ("pretrain", "sft", "reward")})
  runs = [run for arm, replay in ARMS.items()
          for run in grid(f"grpo_{arm}_s{{seed}}", "configs/rl.py:tiny_moe",
                          {**FROM_UPSTREAM, "rl.router_replay": replay}, seed=SEEDS)]
  return Sweep(runs=tuple(runs), upstream=upstream)
