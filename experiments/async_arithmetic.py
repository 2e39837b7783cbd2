"""Asynchronous against synchronous GRPO on the verifiable arithmetic task, rewarded by a
Python checker (`exact_match`, scored on the host): does being one iteration behind cost
accuracy?

  python -m rlhf_jax.sweep --sweep=experiments/async_arithmetic.py --root=runs/async_arithmetic
  python -m rlhf_jax.aggregate --root=runs/async_arithmetic --metric=accuracy --compare=grpo_k1:grpo_k0

The upstream is configs/pipeline.py:arithmetic's pretraining and SFT; every run is that
pipeline's RL stage (configs/arithmetic.py: 60 iterations of 8 prompts x 8 samples), K = 0
(synchronous: sample, score on the host, update) or K = 1 (each update trains on the rollout
sampled one iteration before, scored on the host while the device trains; the stale tokens
weighted by truncated importance sampling, cap 2), both on the same devices. Seeds 0, 1, 2
change sampling, the prompt order and the evaluation's draws, not the SFT policy.
"""

from rlhf_jax.sweep import Run, Sweep, grid

SEEDS = [0, 1, 2]


def get_sweep() -> Sweep:
  upstream = Run("upstream", "configs/pipeline.py:arithmetic", {"stages": ("pretrain", "sft")})
  runs = []
  for k in (0, 1):
    runs += grid(f"grpo_k{k}_s{{seed}}", "configs/arithmetic.py",
                 {"init_from": "{upstream}/sft", "rl.off_policy_steps": k, "rl.is_correction": "tis"}, seed=SEEDS)
  return Sweep(runs=tuple(runs), upstream=upstream)
