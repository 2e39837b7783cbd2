"""The RL stage of the arithmetic pipeline (configs/pipeline.py:arithmetic) on its own, from a
finished SFT run of that pipeline: GRPO by default, rewarded by `exact_match` alone.

  python -m rlhf_jax.main --config=configs/pipeline.py:arithmetic --workdir=runs/arithmetic
  python -m rlhf_jax.main --config=configs/arithmetic.py --workdir=runs/arithmetic_rloo \\
    --config.init_from=runs/arithmetic/sft --config.algo=rloo
"""

from configs import pipeline


def get_config(preset: str = "tiny"):
  del preset  # the pipeline's sizes: the tiny model at byte level
  return pipeline.arithmetic().rl  # without upstream stages: init_from names the pipeline's SFT run
