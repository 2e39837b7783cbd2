"""The tool task's RL stage with and without its calculator, for four methods: does RL learn to
use the tool, does the method matter, and what does the same RL give without one?

  python -m rlhf_jax.sweep --sweep=experiments/tools.py --root=runs/tools_study
  python -m rlhf_jax.aggregate --root=runs/tools_study --metric=accuracy \
    --compare=grpo_tool:grpo_no_tool --compare=rloo_tool:grpo_tool --compare=ppo_tool:grpo_tool \
    --compare=reinforce_pp_tool:grpo_tool

The upstream is configs/pipeline.py:tools's pretraining and SFT (demonstrations that call the
calculator half the time); every run is that pipeline's RL stage (configs/rl.py:tools: 60
iterations of 8 prompts x 8 trajectories on `exact_match`, lr 5e-5, KL 0.05), with the calculator
as its environment or with none (`env.tools=()`: one-turn responses, a call's result never
comes). Only `algo` changes between methods: GRPO, RLOO and REINFORCE++ update once per batch,
PPO four epochs with a critic started from the SFT policy (its preset's), on the same 64
trajectories. Seeds 0, 1, 2 change sampling, the prompt order and the evaluation's draws.
(Asynchronous GRPO on this task: experiments/tools_async.py.)
"""

from rlhf_jax.sweep import Run, Sweep, grid

SEEDS = [0, 1, 2]
ALGORITHMS = ["grpo", "rloo", "ppo", "reinforce_pp"]


def get_sweep() -> Sweep:
  upstream = Run("upstream", "configs/pipeline.py:tools", {"stages": ("pretrain", "sft")})
  base = {"init_from": "{upstream}/sft"}
  runs = grid("{algo}_tool_s{seed}", "configs/rl.py:tools", base, algo=ALGORITHMS, seed=SEEDS)
  runs += grid("{algo}_no_tool_s{seed}", "configs/rl.py:tools", {**base, "env.tools": ()}, algo=ALGORITHMS,
               seed=SEEDS)
  return Sweep(runs=tuple(runs), upstream=upstream)
