"""Asynchronous against synchronous multi-turn GRPO on the tool task: does rolling out with the
calculator one iteration behind cost accuracy?

  python -m rlhf_jax.sweep --sweep=experiments/tools_async.py --root=runs/tools_async
  python -m rlhf_jax.aggregate --root=runs/tools_async --metric=accuracy --compare=grpo_k1:grpo_k0

The upstream is configs/pipeline.py:tools's pretraining and SFT (experiments/tools.py's); every
run is that pipeline's RL stage (configs/rl.py:tools: GRPO, 60 iterations of 8 prompts x 8
trajectories with the calculator, `exact_match`), K = 0 (synchronous) or K = 1 (each update
trains on the trajectories rolled out one iteration before, scored on the host while the device
trains; stale tokens weighted by truncated importance sampling, cap 2, as
experiments/async_arithmetic.py's), both on the same devices. Seeds 0, 1, 2.
"""

from rlhf_jax.sweep import Run, Sweep, grid

SEEDS = [0, 1, 2]


def get_sweep() -> Sweep:
  upstream = Run("upstream", "configs/pipeline.py:tools", {"stages": ("pretrain", "sft")})
  runs = []
  for k in (0, 1):
    runs += grid(f"grpo_k{k}_s{{seed}}", "configs/rl.py:tools",
                 {"init_from": "{upstream}/sft", "rl.off_policy_steps": k, "rl.is_correction": "tis"}, seed=SEEDS)
  return Sweep(runs=tuple(runs), upstream=upstream)
