"""judge_pairs:DIR: a reward run's gold-labelled pairs as records teaching a pairwise judge."""

import json

import pytest

from configs import sft
from rlhf_jax.data import sources
from rlhf_jax.errors import UserError
from rlhf_jax.pairwise_judge import PREFERENCE_TEMPLATE


def pairs_of(run, split):
  with open(f"{run}/preferences_{split}.jsonl") as f:
    return [json.loads(line) for line in f]


def test_each_untied_pair_is_asked_in_both_orders_and_answered_by_the_gold_judges_letter(tiny_upstream):
  run = tiny_upstream["reward_from"]  # a finished reward run: VADER-labelled generated pairs
  data = sft.get_config("tiny").data
  data.source = f"judge_pairs:{run}"
  assert sources.is_record_source(data)
  for split in ("train", "eval"):  # the held-out records are the held-out prompts' pairs
    untied = [row for row in pairs_of(run, split) if row["gold"][0] != row["gold"][1]]
    records = sources.load_pairs(data, split)
    assert len(records) == 2 * len(untied) > 0
    for row, (first, second) in zip(untied, zip(records[0::2], records[1::2])):
      winner = " A" if row["gold"][0] > row["gold"][1] else " B"  # VADER's, not the Bradley-Terry draw's
      assert first == (PREFERENCE_TEMPLATE.format(prompt=row["prompt"], a=row["chosen"], b=row["rejected"]), winner)
      assert second == (PREFERENCE_TEMPLATE.format(prompt=row["prompt"], a=row["rejected"], b=row["chosen"]),
                        " B" if winner == " A" else " A")
  data.prompt_template = "{context}|{a}|{b}"  # another judge prompt, from the records' fields
  row = next(r for r in pairs_of(run, "train") if r["gold"][0] != r["gold"][1])
  assert sources.load_pairs(data, "train")[0][0] == f"{row['prompt']}|{row['chosen']}|{row['rejected']}"
  data.source = f"judge_pairs:{tiny_upstream['init_from']}"  # an SFT run: no pairs
  with pytest.raises(UserError, match="not a finished reward run with generated pairs"):
    sources.load_pairs(data, "train")
