"""PPO vs REINFORCE vs RLOO vs GRPO vs DPO on the embedded sentiment task, 2 seeds each.

  python -m rlhf_jax.sweep --sweep=experiments/showcase.py --root=runs/showcase --parallel=2
  python -m rlhf_jax.aggregate --root=runs/showcase

One shared upstream (pretrain -> SFT -> reward model, the tiny pipeline's first three stages)
so every method starts from the same SFT policy and optimises the same reward model; DPO
trains on the very pairs that reward model learnt from. The RL methods sample the same
number of responses per iteration (64; RLOO and GRPO as 16 prompts x 4) for 20 iterations
at the same KL coefficient; seeds change sampling and the prompt order, not the upstream.
"""

from rlhf_jax.sweep import Run, Sweep, grid

SEEDS = (0, 1)
FROM_UPSTREAM = {"init_from": "{upstream}/sft", "reward_from": "{upstream}/reward"}


def get_sweep() -> Sweep:
  upstream = Run("upstream", "configs/pipeline.py:tiny", {"stages": ("pretrain", "sft", "reward")})
  rl = grid("{algo}_s{seed}", "configs/ppo.py:tiny", FROM_UPSTREAM, algo=["ppo", "reinforce", "rloo", "grpo"],
            seed=list(SEEDS))
  dpo = grid("dpo_s{seed}", "configs/dpo.py:tiny", FROM_UPSTREAM, seed=list(SEEDS))
  return Sweep(runs=tuple(rl + dpo), upstream=upstream)
