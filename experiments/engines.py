"""GRPO on the embedded sentiment task sampled by our engine and by vLLM (rollout.engine), 3 seeds
each: does a run whose rollouts vLLM draws learn as ours does?

  python -m rlhf_jax.sweep --sweep=experiments/engines.py --root=runs/engines
  python -m rlhf_jax.aggregate --root=runs/engines --compare=grpo_vllm:grpo_jax

The showcase's set-up (experiments/showcase.py): one shared pretrain -> SFT -> reward upstream,
GRPO at lr 1e-4, 16 prompts x 4 samples for 20 iterations; the only difference is who samples.
vLLM runs in-process on its CPU build (the `vllm` extra), float32, its weights pushed after each
update. Seeds change sampling, the prompt order and the evaluation's draws, not the upstream;
the two engines draw different tokens from the same seed (their random streams differ).
"""

from rlhf_jax.sweep import Run, Sweep, grid

SEEDS = [0, 1, 2]
FROM_UPSTREAM = {"init_from": "{upstream}/sft", "reward_from": "{upstream}/reward", "algo": "grpo", "optim.lr": 1e-4}


def get_sweep() -> Sweep:
  upstream = Run("upstream", "configs/pipeline.py:tiny", {"stages": ("pretrain", "sft", "reward")})
  runs = grid("grpo_{engine}_s{seed}", "configs/rl.py:tiny", FROM_UPSTREAM,
              **{"rollout.engine": ["jax", "vllm"]}, seed=SEEDS)
  return Sweep(runs=tuple(runs), upstream=upstream)
