"""The whole pipeline, each stage in WORKDIR/STAGE, a finished stage skipped on a rerun.

  python -m rlhf_jax.main --config=configs/pipeline.py:tiny --workdir=runs/demo

Override one stage's field with its name: --config.sft.train.num_steps=100.
WORKDIR/summary.json holds each stage's final eval metrics.
"""

import ml_collections

from configs import pretrain
from configs import sft


def get_config(preset: str = "tiny"):
  c = ml_collections.ConfigDict()
  c.stage = "pipeline"
  c.stages = ("pretrain", "sft")
  c.pretrain = pretrain.get_config(preset)
  c.sft = sft.get_config(preset)
  del c.sft.upstream  # the pipeline runs pretraining itself, in WORKDIR/pretrain
  return c
