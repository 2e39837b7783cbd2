"""The whole pipeline, each stage in WORKDIR/STAGE, a finished stage skipped on a rerun.

  python -m rlhf_jax.main --config=configs/pipeline.py:tiny --workdir=runs/demo

Override one stage's field with its name: --config.sft.train.num_steps=100.
WORKDIR/summary.json holds each stage's final eval metrics.
"""

import ml_collections

from configs import common
from configs import pretrain
from configs import reward
from configs import rl
from configs import sft


def get_config(preset: str = "tiny"):
  """pretrain -> sft -> reward -> rl (InstructGPT's order); `stages` may stop earlier. The RL
  stage runs PPO unless --config.rl.algo says otherwise (it was `ppo` before: a pipeline's
  --config.ppo.FIELD is now --config.rl.FIELD)."""
  c = ml_collections.ConfigDict()
  c.stage = "pipeline"
  c.stages = ("pretrain", "sft", "reward", "rl")
  c.distributed = common.distributed_config()  # the whole pipeline is one multi-host job
  c.pretrain = pretrain.get_config(preset)
  c.sft = sft.get_config(preset)
  c.reward = reward.get_config(preset)
  c.rl = rl.get_config(preset)
  for stage in ("sft", "reward", "rl"):
    del c[stage].upstream  # the pipeline runs every stage itself, in WORKDIR/STAGE
  return c
