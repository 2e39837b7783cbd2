"""The verifiable-task showcase: PPO, GRPO, RLOO, REINFORCE++, Dr. GRPO and DAPO on the
embedded arithmetic problems, 3 seeds each, from one shared SFT policy.

  python -m rlhf_jax.sweep --sweep=experiments/arithmetic.py --root=runs/arithmetic_showcase
  python -m rlhf_jax.aggregate --root=runs/arithmetic_showcase --metric=mean@4 --x=flops \\
    --compare=grpo:ppo --compare=rloo:grpo

The upstream is configs/pipeline.py:arithmetic's pretraining and SFT (800 + 600 steps, slips
0.8, addition and subtraction); every method then runs the pipeline's RL stage as it is (configs/arithmetic.py: 60
iterations of 8 prompts x 8 samples, lr 5e-5, KL coefficient 0.05, eval.k = 4), so they sample
the same number of responses per iteration. Seeds change sampling, the prompt order and the
evaluation's draws, not the SFT policy.
"""

from rlhf_jax.sweep import Run, Sweep, grid

ALGORITHMS = ["grpo", "rloo", "reinforce_pp", "dr_grpo", "dapo", "ppo"]  # PPO, the slowest, last
SEEDS = [0, 1, 2]


def get_sweep() -> Sweep:
  upstream = Run("upstream", "configs/pipeline.py:arithmetic", {"stages": ("pretrain", "sft")})
  runs = grid("{algo}_s{seed}", "configs/arithmetic.py", {"init_from": "{upstream}/sft"}, algo=ALGORITHMS,
              seed=SEEDS)
  return Sweep(runs=tuple(runs), upstream=upstream)
