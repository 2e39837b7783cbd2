"""Reward model: the SFT backbone with a scalar head, trained on preference pairs.

  python -m rlhf_jax.main --config=configs/reward.py:tiny --workdir=runs/rm

With `init_from` empty, the upstream SFT stage (and its pretraining) first runs, or is
reused when finished, under WORKDIR/upstream/. By default the pairs are generated: two SFT
samples per prompt, labelled by VADER through a Bradley-Terry draw with `gold_scale`.
Real data: --config.preference.source=jsonl:PATH or hf:PATH (prompt/chosen/rejected, or the
fields preference.*_field names) or hh:PATH.
"""

import ml_collections

from configs import common
from configs import sft


def get_config(preset: str = "tiny"):
  c = common.base_config("reward", preset)
  small = common.is_small(preset)
  c.model.heads = ("reward",)
  c.optim.lr = 5e-4 if small else 1e-5
  c.optim.warmup_steps = 10 if small else 100
  c.data.batch_size = 16 if small else 64  # pairs per step
  c.train.update(dict(num_steps=120 if small else 2000, eval_every=60 if small else 500,
                      checkpoint_every=60 if small else 500, eval_batches=16, log_every=10 if small else 50))
  # Generated pairs are labelled by `judge`: a gold judge (vader: a Bradley-Terry draw on its
  # scores), or a judge model, hf:DIR or a finished run's directory (RLAIF; rlhf_jax/pairwise_judge.py;
  # an SFT run on data.source=judge_pairs:DIR is one, data/judge_records.py): judge_template (""
  # its default) asked in both orders, the probability kept as the pair's `label`, the pairs
  # still measured by gold_judge. constitution: with a judge model, each pair is asked one of
  # its principles' `choice` questions (Constitutional AI's RL phase: "embedded" or a file,
  # data/constitution.py; judge_template "" is then pairwise_judge.CONSTITUTION_TEMPLATE).
  c.preference = ml_collections.ConfigDict(dict(
      source="generated", judge="vader", gold_judge="vader", judge_template="", judge_batch=16, constitution="",
      gold_scale=5.0, train_pairs=2048 if small else 32768,
      eval_pairs=256 if small else 2048, temperature=1.0, max_new_tokens=96 if small else 256,
      gen_batch=128, eval_fraction=0.05, train_split="train", eval_split="test",
      # jsonl:PATH and hf:PATH: the fields; chosen and rejected may be whole dialogues (prompt_field
      # "") or chat conversations, split where they part. prompt_template: the prompt filled from
      # the record's fields instead ("{prompt}\n"). eval_source: held-out pairs' own file.
      prompt_field="prompt", prompt_template="", chosen_field="chosen", rejected_field="rejected",
      eval_source="", truncate_field="", truncate_text="\n", truncate_tokens=0))  # as data.truncate_*
  c.upstream = {"sft": sft.get_config(preset)}
  return c
