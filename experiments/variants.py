"""The 2025 policy-gradient variants and the newer preference losses on the embedded sentiment
task, from the showcase's shared upstream: one seed each, at the settings of issue 17's check.

  python -m rlhf_jax.sweep --sweep=experiments/variants.py --root=runs/variants
  python -m rlhf_jax.aggregate --root=runs/variants

RL: Dr. GRPO, DAPO, GSPO, CISPO and REINFORCE++ at lr 1e-4 (the critic-free methods' rate in
the showcase), 20 iterations of 64 responses. DPO: rDPO (flip rate 0.1), SLiC's hinge,
length-normalised IPO and SimPO (reference-free; beta 2, gamma 1, SimPO's paper's range) for 64
steps at DPO's default lr. Each run's `eval/ref_gold_reward` is the SFT policy's on the same
prompts, so a run's gain is `eval/gold_reward` minus it.
"""

from rlhf_jax.sweep import Run, Sweep, grid

FROM_UPSTREAM = {"init_from": "{upstream}/sft", "reward_from": "{upstream}/reward"}
DPO_LOSSES = {
    "robust": {"dpo.loss": "robust", "dpo.label_smoothing": 0.1},
    "hinge": {"dpo.loss": "hinge"},
    "ipo_normalised": {"dpo.loss": "ipo", "dpo.length_normalise": True},
    "simpo": {"dpo.loss": "simpo", "dpo.beta": 2.0, "dpo.gamma": 1.0},
}


def get_sweep() -> Sweep:
  upstream = Run("upstream", "configs/pipeline.py:tiny", {"stages": ("pretrain", "sft", "reward")})
  rl = grid("{algo}_lr{lr}", "configs/rl.py:tiny", FROM_UPSTREAM,
            algo=["dr_grpo", "dapo", "gspo", "cispo", "reinforce_pp"], **{"optim.lr": [1e-4]})
  dpo = [Run(f"dpo_{name}", "configs/dpo.py:tiny", {**FROM_UPSTREAM, **fields})
         for name, fields in DPO_LOSSES.items()]
  return Sweep(runs=tuple(rl + dpo), upstream=upstream)
