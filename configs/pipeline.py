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
  --config.ppo.FIELD is now --config.rl.FIELD). Presets `arithmetic`: the verifiable task;
  `tools`: the multi-turn tool task."""
  if preset == "arithmetic":
    return arithmetic()
  if preset == "tools":
    return tools()
  c = ml_collections.ConfigDict()
  c.stage = "pipeline"
  c.stages = ("pretrain", "sft", "reward", "rl")
  c.distributed = common.distributed_config()  # the whole pipeline is one multi-host job
  c.plugins = ()  # rlhf_jax/plugins.py: imported for every stage (a stage's own plugins too)
  c.log = common.base_config("pretrain", preset).log  # W&B for every stage (a stage's own log wins)
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
  # Sized so that SFT is imperfect in a way a verifier can fix: the model learns the worked
  # method in 800 + 600 steps, but 80% of the demonstrations with a carry or borrow forget it,
  # so SFT forgets often. Addition and subtraction only: what the small model gets wrong in
  # multiplication is its products, which 60 iterations do not move (issue 46).
  c.pretrain.train.update(dict(num_steps=800, eval_every=400, checkpoint_every=400))
  c.sft.train.update(dict(num_steps=600, eval_every=300, checkpoint_every=300))
  for stage in c.stages:
    c[stage].data.update(dict(arithmetic_slips=0.8, arithmetic_operations=("+", "-")))
  c.rl.algo, c.rl.judge, c.rl.reward.fns = "grpo", "", ("exact_match",)
  c.rl.update(dict(max_prompt_len=24, eval_prompts=128, kl_coef=0.05))
  c.rl.rl.samples_per_prompt = 8  # 8 prompts x 8 samples: a group rarely agrees on its carry
  c.rl.eval.k = 4  # greedy accuracy, pass@4, mean@4, maj@4
  c.rl.sample.max_new_tokens = 96  # the longest worked solution is 63 bytes + EOS: room, so none is cut
  # lr 1e-4 (the sentiment task's) drove this policy, nearly deterministic after SFT (entropy
  # ~0.1), away from its answers at KL 10.
  c.rl.optim.lr = 5e-5
  c.rl.train.update(dict(num_steps=60, eval_every=20, checkpoint_every=20))
  return c


def tools():
  """pretrain -> SFT -> multi-turn RL on the embedded tool task (data/tool_arithmetic.py):
  chained products the tiny model cannot compute, demonstrations that call the calculator, and
  the calculator as the RL stage's environment (docs/multi_turn.md). GRPO on `exact_match`.

    python -m rlhf_jax.main --config=configs/pipeline.py:tools --workdir=runs/tools
  """
  c = arithmetic()
  for stage in c.stages:
    # Half the demonstrations answer in their head (right, but not computable by this model):
    # SFT calls the tool half the time; a verifier's reward teaches it to call.
    c[stage].data.update(dict(source="embedded:tool_arithmetic", arithmetic_slips=0.5))
  c.rl.env.update(dict(tools=("calculator",), max_turns=2, turn_tokens=48))  # a call, then the answer
  c.rl.update(dict(max_prompt_len=32))
  c.rl.eval.k = 1  # draws per held-out prompt for greedy accuracy, pass@k, mean@k, maj@k; multi-turn takes 1
  return c
