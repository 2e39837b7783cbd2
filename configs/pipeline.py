"""The whole pipeline, each stage in WORKDIR/STAGE, a finished stage skipped on a rerun.

  python -m rlhf_jax.main --config=configs/pipeline.py:tiny --workdir=runs/demo

Override one stage's field with its name: --config.sft.train.num_steps=100.
WORKDIR/summary.json holds each stage's final eval metrics.
"""

import ml_collections

from configs import common
from configs import pretrain
from configs import revise
from configs import reward
from configs import rl
from configs import sft


def get_config(preset: str = "tiny"):
  """pretrain -> sft -> reward -> rl (InstructGPT's order); `stages` may stop earlier. The RL
  stage runs PPO unless --config.rl.algo says otherwise (it was `ppo` before: a pipeline's
  --config.ppo.FIELD is now --config.rl.FIELD). Presets `arithmetic`: the verifiable task;
  `tools`: the multi-turn tool task; `tldr`: Reddit TL;DR summarisation from a Hugging Face GPT-2;
  `constitutional`: Constitutional AI (revise -> SFT -> AI-labelled reward model -> RL) from a
  Hugging Face instruct model; `reasoning_gym`: a reasoning-gym task (syllogism), SFT then
  GRPO on its own scorer."""
  if preset == "arithmetic":
    return arithmetic()
  if preset == "constitutional":
    return constitutional()
  if preset == "tools":
    return tools()
  if preset == "tldr":
    return tldr()
  if preset == "reasoning_gym":
    return reasoning_gym()
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


def reasoning_gym():
  """SFT -> RL on a reasoning-gym task (PyPI's reasoning-gym, generated offline: nothing is
  downloaded): syllogism (two premises and a conclusion: does it follow? Yes or No, half of them
  valid), the tiny model at byte level from scratch: SFT on the task's answers, then GRPO on the
  task's own scorer, evaluated by `reasoning_gym_solved` (full marks) as accuracy.

    python -m rlhf_jax.main --config=configs/pipeline.py:reasoning_gym --workdir=runs/reasoning_gym
  """
  c = arithmetic()
  c.stages = ("sft", "rl")
  del c.pretrain
  for stage in c.stages:
    c[stage].data.update(dict(source="reasoning_gym:syllogism", prompt_template="{prompt}\n",
                              response_field="answer", embedded_docs=20000, eval_docs=256,
                              reasoning_gym_options='{"invalid_ratio": 0.5}'))
    c[stage].model.max_len = 192  # the questions are 130-190 bytes, 160 at the median
  c.sft.data.seq_len = 192  # a question, its answer and EOS
  c.sft.init_from = ""  # from scratch: no pretraining on this task
  c.sft.train.update(dict(num_steps=500, eval_every=250, checkpoint_every=250))
  # Trained on the task's score, judged by full marks (weight 0: measured, not rewarded); for
  # syllogism the two agree, for a partial-credit task (spell_backward) they do not.
  c.rl.reward.update(dict(fns=("reasoning_gym", "reasoning_gym_solved"), weights=(1.0, 0.0)))
  c.rl.sample.max_new_tokens = 8  # "Yes" and EOS: room
  c.rl.max_prompt_len = 176  # 96% of the questions; the 4% longer lose their opening words ("Consider these")
  c.rl.eval_prompts = 256  # every held-out question: a narrower interval
  c.rl.rl.samples_per_prompt = 8  # SFT's pass@4 (0.87) is above its mean@4 (0.72): most groups hold both answers
  # Measured: 60 iterations lift the sampled accuracy by 0.07 (docs/data.md); 3e-4 collapsed the
  # tiny policy on spell_backward.
  c.rl.optim.lr = 1e-4
  return c


# Where docs/data.md's downloads put the TL;DR files (`huggingface-cli download ... --local-dir`).
TLDR_GPT2 = "hf:models/gpt2"
TLDR_SFT = "hf:data/tldr_sft/data/{split}-*.parquet"  # CarperAI/openai_summarize_tldr: prompt, label
TLDR_PAIRS = "hf:data/tldr_pairs/data/{split}-*.parquet"  # CarperAI/openai_summarize_comparisons


def tldr():
  """SFT -> reward model -> PPO on Reddit TL;DR, with Huang et al. 2024's set-up ("The N+
  implementation details of RLHF with PPO", ../shared/REFERENCES.md section 7), from a local
  Hugging Face GPT-2 (or Pythia: --config.sft.init_from=hf:DIR). Queries are the SFT set's
  `prompt` ("SUBREDDIT: r/...\nTITLE: ...\nPOST: ...\nTL;DR:", up to 512 tokens), responses its
  `label` (up to 53 tokens, EOS after); the comparisons' `prompt` takes "\n" and their `chosen` /
  `rejected` ("TL;DR: ...") follow it. docs/data.md gives the downloads and the GPU commands.

    python -m rlhf_jax.main --config=configs/pipeline.py:tldr --workdir=runs/tldr
  """
  c = get_config("gpt2_small")
  c.stages = ("sft", "reward", "rl")
  del c.pretrain
  c.sft.init_from = TLDR_GPT2
  c.sft.data.update(dict(source=TLDR_SFT.format(split="train"), eval_source=TLDR_SFT.format(split="valid"),
                         prompt_field="prompt", response_field="label", batch_size=128, seq_len=512 + 53))
  # SFT: lr 3e-6, cosine, batch 128, one epoch of the 116,722 posts.
  c.sft.optim.update(dict(lr=3e-6, warmup_steps=0, final_lr_ratio=0.0))
  c.sft.train.update(dict(num_steps=912, eval_every=300, checkpoint_every=300))
  c.sft.sample.max_new_tokens = 53
  # Reward model: the loss read at EOS; lr 3e-6, batch 64, one epoch of the 92,858 pairs.
  c.reward.preference.update(dict(source=TLDR_PAIRS.format(split="train"), eval_source=TLDR_PAIRS.format(split="test"),
                                  prompt_field="prompt", prompt_template="{prompt}\n", chosen_field="chosen",
                                  rejected_field="rejected"))
  c.reward.data.update(dict(batch_size=64, seq_len=512 + 169))
  c.reward.optim.update(dict(lr=3e-6, warmup_steps=0, final_lr_ratio=0.0))
  c.reward.train.update(dict(num_steps=1450, eval_every=500, checkpoint_every=500))
  # PPO: lr 3e-6 decayed linearly, 512 responses an iteration (1M episodes: 1953 of them), 4
  # epochs of 4 minibatches, beta 0.05, temperature 0.7, 53 new tokens, -1 without EOS, the
  # critic from the reward model; judged by the reward model, the KL and the summaries' length.
  c.rl.algo, c.rl.judge, c.rl.kl_coef, c.rl.critic = "ppo", "", 0.05, "reward"
  c.rl.data.update(dict(source=TLDR_SFT.format(split="train"), eval_source=TLDR_SFT.format(split="valid"),
                        prompt_field="prompt", batch_size=512))
  c.rl.update(dict(max_prompt_len=512, eval_prompts=256))
  c.rl.sample.update(dict(max_new_tokens=53, temperature=0.7))
  c.rl.rl.update(dict(epochs=4, minibatches=4, penalise_no_eos=True, no_eos_penalty=-1.0))
  for optim in (c.rl.optim, c.rl.value_optim):
    optim.update(dict(lr=3e-6, warmup_steps=0, final_lr_ratio=0.0, schedule="linear"))
  c.rl.train.update(dict(num_steps=1953, eval_every=200, checkpoint_every=200))
  return c


# Where docs/ai_feedback.md puts the constitutional pipeline's model (an instruct model, which is
# also the judge) and its prompts (JSONL with a `prompt` field, e.g. red-teaming prompts).
CAI_MODEL = "hf:models/instruct"
CAI_PROMPTS = "jsonl:data/cai_prompts.jsonl"


def constitutional():
  """Constitutional AI (Bai et al. 2022, ../shared/REFERENCES.md): the model answers the prompts
  and revises its answers by principles drawn from the constitution (revise), SFT on the final
  revisions (the paper's SL-CAI; `sft.data.source="revise:"`, a stage's name without a path, reads
  WORKDIR/revise), a reward model on pairs of the SFT policy's responses that the judge model
  labels, asked one of the constitution's `choice` questions per pair (RLAIF), then RL (PPO) on
  that reward, judged by the reward model, the KL and the lengths (no gold judge). The SFT, reward
  and RL stages read the same prompts in the paper's "Human: ... Assistant:" format; the revise
  stage wraps them in its own `revise.human_template`. SFT starts from the model revised (the
  paper: from its pretrained model). docs/ai_feedback.md gives the files and the GPU commands.

    python -m rlhf_jax.main --config=configs/pipeline.py:constitutional --workdir=runs/cai
  """
  c = get_config("gpt2_small")
  c.stages = ("revise", "sft", "reward", "rl")
  del c.pretrain
  c.revise = revise.get_config("gpt2_small")
  del c.revise.upstream
  c.revise.init_from = CAI_MODEL
  c.revise.data.source = CAI_PROMPTS
  for stage in ("sft", "reward", "rl"):
    c[stage].data.update(dict(source=CAI_PROMPTS, prompt_template=revise.HUMAN))
  c.sft.init_from = CAI_MODEL
  c.sft.data.source = "revise:"
  c.reward.preference.update(dict(judge=CAI_MODEL, constitution=c.revise.revise.constitution))
  c.rl.judge = ""
  c.rl.update(dict(max_prompt_len=256))
  return c
