"""Records that teach a policy to be a pairwise judge: a reward run's gold-labelled generated
pairs, each asked in both orders (`data.source=judge_pairs:DIR`, DIR a finished reward run
with `preference.source=generated`).

For a pair whose two responses the gold judge scores differently (its `gold`, e.g. VADER's),
two records, one per order:

  {"prompt": PREFERENCE_TEMPLATE filled with the pair's prompt and the responses as A and B,
   "response": " A" or " B" (the gold judge's preferred one's letter: the very text whose first
               token pairwise_judge.PairwiseJudge reads),
   "context": the pair's prompt, "a": ..., "b": ...}

The gold judge's own preference, not the pair's Bradley-Terry `chosen` (a noisy draw on it):
the judge is taught what gold prefers. Ties are left out (no letter is right). The training
records come from DIR/preferences_train.jsonl, the held-out ones from preferences_eval.jsonl
(pairs of held-out prompts). Another judge prompt: `data.prompt_template` filled from
`context`, `a` and `b`, with the reward stage's `preference.judge_template` the same text
reading {prompt}, {a} and {b}.
"""

import os

from rlhf_jax.errors import UserError
from rlhf_jax.pairwise_judge import PREFERENCE_TEMPLATE
from rlhf_jax.workdir import RunDir

KIND = "judge_pairs"
ANSWERS = (" A", " B")  # what PairwiseJudge reads: the first tokens of " A" and " B"


def pairs_file(run: str, split: str) -> str:
  """The generated pairs of `split` of the finished reward run in `run`."""
  path = os.path.join(run, f"preferences_{split}.jsonl")
  if not RunDir(run).finished or not os.path.isfile(path):
    raise UserError(f"data.source={KIND}:{run}: not a finished reward run with generated pairs (no summary.json "
                    f"or preferences_{split}.jsonl there)")
  return path


def judge_records(prompt: str, first: str, second: str, first_wins: bool) -> list[dict]:
  """The pair asked with `first` as A, then with it as B, each answered by the winner's letter."""
  return [{"prompt": PREFERENCE_TEMPLATE.format(prompt=prompt, a=a, b=b), "response": ANSWERS[0 if a_wins else 1],
           "context": prompt, "a": a, "b": b}
          for a, b, a_wins in ((first, second, first_wins), (second, first, not first_wins))]


def records_of(rows, where: str) -> list[tuple]:
  """(FILE:LINE, record) for both orders of every untied row of a pairs file."""
  out = []
  for number, row in rows:
    gold = row.get("gold")
    if not (isinstance(gold, list) and len(gold) == 2):
      raise UserError(f"{where}:{number}: no gold scores (`gold`) to label the pair by")
    if gold[0] != gold[1]:
      out += [(f"{where}:{number}", r) for r in judge_records(row["prompt"], row["chosen"], row["rejected"],
                                                              gold[0] > gold[1])]
  return out
