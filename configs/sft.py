"""Supervised fine-tuning: the loss covers response tokens only.

  python -m rlhf_jax.main --config=configs/sft.py:tiny --workdir=runs/sft

With `init_from` empty, the upstream pretraining stage (config field `upstream`) first runs
(or is reused when finished) in WORKDIR/upstream/pretrain, and SFT starts from it. Point
`--config.init_from=runs/pretrain` at a finished run to skip that.
"""

from configs import common
from configs import pretrain


def get_config(preset: str = "tiny"):
  c = common.base_config("sft", preset)
  small = common.is_small(preset)
  c.optim.lr = 1e-3 if small else 1e-4
  c.optim.warmup_steps = 20 if small else 200
  c.train.num_steps = 200 if small else 5000
  c.train.eval_every = 100 if small else 1000
  c.train.checkpoint_every = 100 if small else 1000
  c.upstream = {"pretrain": pretrain.get_config(preset)}
  return c
