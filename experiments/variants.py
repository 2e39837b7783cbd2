"""Replaced by experiments/showcase.py, which runs every RL method and preference loss at 3
seeds. Kept so the old command still works: it runs the showcase's runs of the 2025 variants
and the newer preference losses (the names now end in _sN, the seed).

  python -m rlhf_jax.sweep --sweep=experiments/variants.py --root=runs/variants
"""

import dataclasses

from experiments import showcase

VARIANTS = ("dr_grpo", "dapo", "gspo", "cispo", "reinforce_pp", "dpo_")


def get_sweep():
  sweep = showcase.get_sweep()
  runs = tuple(r for r in sweep.runs if r.name.startswith(VARIANTS) and not r.name.startswith("dpo_s"))
  return dataclasses.replace(sweep, runs=runs)
