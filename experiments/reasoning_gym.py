"""The reasoning-gym showcase: GRPO and RLOO on reasoning-gym's syllogism task, 3 seeds each, from
one shared SFT policy (issue 44's item 5).

  python -m rlhf_jax.sweep --sweep=experiments/reasoning_gym.py --root=runs/reasoning_gym_showcase
  python -m rlhf_jax.aggregate --root=runs/reasoning_gym_showcase --metric=mean@4 --x=flops \\
    --compare=grpo:rloo

The upstream is configs/pipeline.py:reasoning_gym's SFT (the tiny model from scratch, 500 steps on
the task's answers); each method then runs the pipeline's RL stage as it is (configs/reasoning_gym.py:
60 iterations of 8 questions x 8 samples, lr 1e-4, evaluated on the 256 held-out questions with
eval.k = 4). Seeds change sampling, the question order and the evaluation's draws, not the SFT
policy.
"""

from rlhf_jax.sweep import Run, Sweep, grid

ALGORITHMS = ["grpo", "rloo"]
SEEDS = [0, 1, 2]


def get_sweep() -> Sweep:
  upstream = Run("upstream", "configs/pipeline.py:reasoning_gym", {"stages": ("sft",)})
  runs = grid("{algo}_s{seed}", "configs/reasoning_gym.py", {"init_from": "{upstream}/sft"}, algo=ALGORITHMS,
              seed=SEEDS)
  return Sweep(runs=tuple(runs), upstream=upstream)
