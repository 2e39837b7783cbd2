"""The RL stage of the reasoning-gym pipeline (configs/pipeline.py:reasoning_gym) on its own, from
a finished SFT run of that pipeline: GRPO by default, on the task's own scorer.

  python -m rlhf_jax.main --config=configs/pipeline.py:reasoning_gym --workdir=runs/reasoning_gym
  python -m rlhf_jax.main --config=configs/reasoning_gym.py --workdir=runs/reasoning_gym_rloo \\
    --config.init_from=runs/reasoning_gym/sft --config.algo=rloo
"""

from configs import pipeline


def get_config(preset: str = "tiny"):
  del preset  # the pipeline's sizes: the tiny model at byte level
  return pipeline.reasoning_gym().rl  # without upstream stages: init_from names the pipeline's SFT run
