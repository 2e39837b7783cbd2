"""PPO vs REINFORCE vs RLOO vs GRPO vs DPO on the embedded sentiment task, 2 seeds each.

  python -m rlhf_jax.sweep --sweep=experiments/showcase.py --root=runs/showcase
  python -m rlhf_jax.aggregate --root=runs/showcase

One shared upstream (pretrain -> SFT -> reward model, the tiny pipeline's first three stages)
so every method starts from the same SFT policy and optimises the same reward model; DPO
trains on the very pairs that reward model learnt from. The RL methods sample the same
number of responses per iteration (64; RLOO and GRPO as 16 prompts x 4) for 20 iterations
at the same KL coefficient. Each method runs at two learning rates: PPO makes 8 updates per
batch (4 epochs x 2 minibatches), the critic-free methods one, so one rate cannot suit all.
Seeds change sampling and the prompt order, not the upstream.
"""

from rlhf_jax.sweep import Run, Sweep, grid

SEEDS = [0, 1]
FROM_UPSTREAM = {"init_from": "{upstream}/sft", "reward_from": "{upstream}/reward"}


def get_sweep() -> Sweep:
  upstream = Run("upstream", "configs/pipeline.py:tiny", {"stages": ("pretrain", "sft", "reward")})
  rl = grid("{algo}_lr{lr}_s{seed}", "configs/rl.py:tiny", FROM_UPSTREAM,
            algo=["ppo", "reinforce", "rloo", "grpo"], **{"optim.lr": [1.5e-5, 1e-4]}, seed=SEEDS)
  dpo = grid("dpo_lr{lr}_s{seed}", "configs/dpo.py:tiny", FROM_UPSTREAM, **{"optim.lr": [3e-5, 1e-4]}, seed=SEEDS)
  return Sweep(runs=tuple(rl + dpo), upstream=upstream)
