"""Off-policy RL on the embedded sentiment task: PPO and GRPO with the sampler K in {0, 1, 4}
iterations behind, gold reward against iterations and against wall time.

  python -m rlhf_jax.sweep --sweep=experiments/off_policy.py --root=runs/off_policy
  python -m rlhf_jax.aggregate --root=runs/off_policy --x=seconds --compare=ppo8_k1:ppo8_k0 --compare=ppo_k1:ppo_k0

The CPU is split into 2 JAX devices (one per core). K = 0 is the synchronous iteration on
both (rows split over them); K >= 1 samples on one device (rollout.devices=1) while the other
trains, the critic-free methods' stale tokens weighted by truncated importance sampling (cap
2). Every run starts from the tiny pipeline's upstream (the showcase's: one shared pretrain ->
SFT -> reward model) and runs the RL preset's 20 iterations at lr 1e-4. Seeds change
sampling, the prompt order and the evaluation's draws. `ppo8_k0` / `ppo8_k1`: the same PPO
on 8 simulated devices, synchronous on all 8 against K = 1 with 4 sampling and 4 training.
"""

from rlhf_jax.sweep import Run, Sweep, grid

SEEDS = [0, 1]
FROM_UPSTREAM = {"init_from": "{upstream}/sft", "reward_from": "{upstream}/reward", "optim.lr": 1e-4,
                 "distributed.cpu_devices": 2, "rl.is_correction": "tis"}


def get_sweep() -> Sweep:
  upstream = Run("upstream", "configs/pipeline.py:tiny", {"stages": ("pretrain", "sft", "reward")})
  runs = []
  for k in (0, 1):  # first: the 4 + 4 split against the synchronous run on all 8
    placement = {"distributed.cpu_devices": 8, "rl.off_policy_steps": k, "rollout.devices": 4 if k else 0}
    runs += grid(f"ppo8_k{k}_s{{seed}}", "configs/rl.py:tiny", {**FROM_UPSTREAM, **placement, "algo": "ppo"},
                 seed=SEEDS)
  for k, seeds in ((0, SEEDS), (1, SEEDS), (4, SEEDS[:1])):  # K = 4: how stale it may go, one seed
    placement = {"rl.off_policy_steps": k, "rollout.devices": 1 if k else 0}
    runs += grid(f"{{algo}}_k{k}_s{{seed}}", "configs/rl.py:tiny", {**FROM_UPSTREAM, **placement},
                 algo=["ppo", "grpo"], seed=seeds)
  return Sweep(runs=tuple(runs), upstream=upstream)
