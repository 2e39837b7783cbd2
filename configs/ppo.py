"""PPO's preset of the RL stage (configs/rl.py), under the stage's earlier name.

  python -m rlhf_jax.main --config=configs/ppo.py:tiny --workdir=runs/ppo
"""

from configs import rl


def get_config(preset: str = "tiny"):
  c = rl.get_config(preset)
  c.algo = "ppo"
  return c
