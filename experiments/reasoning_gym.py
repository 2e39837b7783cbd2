"""The reasoning-gym showcase: GRPO and RLOO on spell_backward (PyPI's reasoning-gym, generated
offline), 3 seeds each, from one shared SFT policy trained from scratch on the task's answers.

  python -m rlhf_jax.sweep --sweep=experiments/reasoning_gym.py --root=runs/reasoning_gym_showcase
  python -m rlhf_jax.aggregate --root=runs/reasoning_gym_showcase --metric=accuracy --compare=rloo:grpo

The upstream is configs/pipeline.py:reasoning_gym's SFT (500 steps, words of 3 to 8 letters);
each method then runs the pipeline's RL stage as it is (configs/reasoning_gym.py: 8 prompts x 8
samples an iteration, lr 1e-4, KL coefficient 0.05), rewarded by the task's partial credit and
judged on 256 held-out words by full marks (`reasoning_gym_solved`). Seeds change sampling, the
prompt order and the evaluation's draws, not the SFT policy; the table's "SFT accuracy" column is
that policy's, evaluated beside each run's on the same held-out words.
"""

from rlhf_jax.sweep import Run, Sweep, grid

ALGORITHMS = ["grpo", "rloo"]
SEEDS = [0, 1, 2]


def get_sweep() -> Sweep:
  upstream = Run("upstream", "configs/pipeline.py:reasoning_gym", {"stages": ("sft",)})
  runs = grid("{algo}_s{seed}", "configs/reasoning_gym.py", {"init_from": "{upstream}/sft"}, algo=ALGORITHMS,
              seed=SEEDS)
  return Sweep(runs=tuple(runs), upstream=upstream)
