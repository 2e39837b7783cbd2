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
  # Sized so that SFT is imperfect: 500 + 400 steps gave held-out accuracy 0.30 (250 + 300:
  # 0.09; 800 + 600: 0.73).
  c.pretrain.train.update(dict(num_steps=500, eval_every=250, checkpoint_every=250))
  c.sft.train.update(dict(num_steps=400, eval_every=200, checkpoint_every=200))
  c.rl.algo, c.rl.judge, c.rl.reward.fns = "grpo", "", ("exact_match",)
  c.rl.update(dict(max_prompt_len=24, eval_prompts=128))
  c.rl.sample.max_new_tokens = 96  # the longest worked solution is 63 bytes + EOS: room, so none is cut
  # lr 1e-4 (the sentiment task's) drove this policy, nearly deterministic after SFT (entropy
  # ~0.1), away from its answers; 2e-5 holds them (README: not yet the +0.15 the task wants).
  c.rl.optim.lr = 2e-5
  c.rl.train.update(dict(num_steps=40, eval_every=10, checkpoint_every=10))
  return c
