"""The tool task's RL stage with and without its calculator: does RL learn to use the tool,
and what does the same RL give without one?

  python -m rlhf_jax.sweep --sweep=experiments/tools.py --root=runs/tools_study
  python -m rlhf_jax.aggregate --root=runs/tools_study --metric=accuracy --compare=grpo_tool:grpo_no_tool

The upstream is configs/pipeline.py:tools's pretraining and SFT (demonstrations that call the
calculator half the time); every run is that pipeline's RL stage (configs/rl.py:tools: GRPO,
60 iterations of 8 prompts x 8 trajectories on `exact_match`), with the calculator as its
environment or with none (`env.tools=()`: one-turn responses, a call's result never comes).
Seeds 0, 1, 2 change sampling, the prompt order and the evaluation's draws.
"""

from rlhf_jax.sweep import Run, Sweep, grid

SEEDS = [0, 1, 2]


def get_sweep() -> Sweep:
  upstream = Run("upstream", "configs/pipeline.py:tools", {"stages": ("pretrain", "sft")})
  runs = grid("grpo_tool_s{seed}", "configs/rl.py:tools", {"init_from": "{upstream}/sft"}, seed=SEEDS)
  runs += grid("grpo_no_tool_s{seed}", "configs/rl.py:tools", {"init_from": "{upstream}/sft", "env.tools": ()},
               seed=SEEDS)
  return Sweep(runs=tuple(runs), upstream=upstream)
