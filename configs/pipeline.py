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
  --config.ppo.FIELD is now --config.rl.FIELD). Preset `arithmetic`: the verifiable task."""
  if preset == "arithmetic":
    return arithmetic()
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


def arithmetic():
  """pretrain -> SFT -> RL on the embedded arithmetic problems (data/arithmetic.py), the tiny
  model at byte level (digits stay digits), rewarded by the built-in `exact_match` checker:
  no reward model. RL is GRPO; --config.rl.algo takes PPO and every other method.

    python -m rlhf_jax.main --config=configs/pipeline.py:arithmetic --workdir=runs/arithmetic
  """
  c = get_config("tiny")
  c.stages = ("pretrain", "sft", "rl")
  del c.reward
  for stage in c.stages:
    c[stage].data.update(dict(source="embedded:arithmetic", prompt_template="{question}", embedded_docs=20000,
                              eval_docs=256))
    c[stage].tokenizer.kind = "byte"
  c.sft.train.num_steps = 300
  c.rl.algo, c.rl.judge, c.rl.reward.fns = "grpo", "", ("exact_match",)
  c.rl.update(dict(max_prompt_len=24, eval_prompts=128))
  c.rl.sample.max_new_tokens = 64
  c.rl.optim.lr = 1e-4  # the critic-free methods' rate on the tiny model (README's showcase)
  c.rl.train.update(dict(num_steps=30, eval_every=10, checkpoint_every=10))
  return c
