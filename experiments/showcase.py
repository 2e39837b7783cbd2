"""Every RL method (3 seeds) and every preference loss (2 seeds) on the embedded sentiment task.

  python -m rlhf_jax.sweep --sweep=experiments/showcase.py --root=runs/showcase
  python -m rlhf_jax.aggregate --root=runs/showcase --x=flops --compare=ppo:grpo --compare=rloo:grpo \
    --compare=cispo:grpo --compare=dapo:grpo --compare=dpo_simpo:dpo

One shared upstream (pretrain -> SFT -> reward model, the tiny pipeline's first three stages)
so every method starts from the same SFT policy and optimises the same reward model; DPO
trains on the very pairs that reward model learnt from. The RL methods sample the same
number of responses per iteration (64; the group methods as 16 prompts x 4) for 20 iterations
at the same KL coefficient and lr 1e-4 (an earlier run of this sweep also tried 1.5e-5: there
the critic-free methods, one update per batch against PPO's eight, barely moved). DPO runs
its preset's 64 steps at lr 3e-5 (at 1e-4 it paid 10.6 nats of KL for the same gold reward).
Seeds change sampling, the prompt order and the evaluation's draws, not the upstream.
"""

from rlhf_jax.sweep import Run, Sweep, grid

SEEDS = [0, 1, 2]
DPO_SEEDS = SEEDS[:2]  # the DPO runs are the slower half of this sweep on 2 CPU cores
FROM_UPSTREAM = {"init_from": "{upstream}/sft", "reward_from": "{upstream}/reward"}
RL_ALGORITHMS = ["ppo", "reinforce", "rloo", "grpo", "remax", "dr_grpo", "dapo", "gspo", "cispo", "reinforce_pp"]
DPO_LOSSES = {
    "dpo": {},
    "dpo_ipo_normalised": {"dpo.loss": "ipo", "dpo.length_normalise": True},
    "dpo_conservative": {"dpo.loss": "conservative", "dpo.label_smoothing": 0.1},
    "dpo_robust": {"dpo.loss": "robust", "dpo.label_smoothing": 0.1},
    "dpo_hinge": {"dpo.loss": "hinge"},
    "dpo_simpo": {"dpo.loss": "simpo", "dpo.beta": 2.0, "dpo.gamma": 1.0},
}


def get_sweep() -> Sweep:
  upstream = Run("upstream", "configs/pipeline.py:tiny", {"stages": ("pretrain", "sft", "reward")})
  rl = grid("{algo}_s{seed}", "configs/rl.py:tiny", {**FROM_UPSTREAM, "optim.lr": 1e-4}, algo=RL_ALGORITHMS,
            seed=SEEDS)
  dpo = [run for name, fields in DPO_LOSSES.items()
         for run in grid(name + "_s{seed}", "configs/dpo.py:tiny", {**FROM_UPSTREAM, **fields}, seed=DPO_SEEDS)]
  return Sweep(runs=tuple(rl + dpo), upstream=upstream)
