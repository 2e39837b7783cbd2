"""RLAIF with a judge trained here, on the embedded sentiment task: the SFT policy fine-tuned to
answer "A" or "B" by VADER's preference labels the reward model's pairs; does GRPO on that
reward model gain as much gold (VADER) reward as on the reward model of VADER-labelled pairs?

  python -m rlhf_jax.sweep --sweep=experiments/rlaif.py --root=runs/rlaif [--parallel=2]
  python -m rlhf_jax.aggregate --root=runs/rlaif --compare=grpo_ai:grpo_vader
  python -m experiments.rlaif --root=runs/rlaif [--out=experiments/results/rlaif]

This file is both the study's upstream pipeline (`get_config`) and its sweep (`get_sweep`):
pretrain -> SFT -> `reward` (the tiny pipeline's reward model: SFT pairs labelled by a
Bradley-Terry draw on VADER's scores, written to preferences_{train,eval}.jsonl) -> `judge` (the
SFT policy fine-tuned on those pairs as judge records, `data.source=judge_pairs:DIR`: each pair
in both orders, answered by VADER's preferred response's letter) -> `ai_reward` (a reward model
from the same SFT policy, on pairs the judge labels, both orders averaged: soft labels). The
two reward stages sample the very same pairs (same SFT policy, seed and prompts), so the
reward models differ in their labels alone. Then GRPO as experiments/engines.py runs it (lr
1e-4, 16 prompts x 4 samples) for 60 iterations, 3 seeds on each reward model.

Responses are 24 tokens (pairs and RL alike): the judge reads a prompt and two responses in
the tiny model's 128 positions, the template taking 49 of them. Run as a script, it writes
judge.md: the judge's agreement with VADER on the held-out pairs (those of the held-out
prompts, which the judge never trained on), the two orders' agreement, and both reward models'
held-out accuracy against VADER.
"""

import json
import os
import sys

from absl import app
from absl import flags

from configs import pipeline, reward, sft
from rlhf_jax import stats
from rlhf_jax.sweep import Run, Sweep

SEEDS = [0, 1, 2]
RESPONSE_TOKENS = 24
EVAL_PAIRS = 512  # held-out pairs: the judge's agreement is measured on these
DEFAULT_ROOT = "runs/rlaif/upstream"  # the sweep's paths; another work directory: override both below
LABELLERS = {"vader": "reward", "ai": "ai_reward"}  # the RL runs' name -> the reward model they optimise
LABELS = {"vader": "VADER's Bradley-Terry draw (gold_scale 5)", "ai": "the trained judge, both orders"}
# No -1 for a response without EOS (penalise_no_eos): the SFT policy's reviews run ~40 tokens,
# so nearly every 24-token one is cut, and the penalty made 94% of the groups' scores equal
# (measured: nothing learnt in 60 iterations). 60 iterations, not engines.py's 20: fewer tokens.
RL = {"init_from": "{upstream}/sft", "algo": "grpo", "optim.lr": 1e-4, "sample.max_new_tokens": RESPONSE_TOKENS,
      "rl.penalise_no_eos": False, "train.num_steps": 60, "train.eval_every": 20, "train.checkpoint_every": 20}


def reward_section(preset: str):
  """A reward stage from the pipeline's SFT policy, on pairs of 24-token responses."""
  section = reward.get_config(preset)
  del section.upstream
  section.upstream_paths = {"init_from": "sft"}
  section.preference.update(dict(max_new_tokens=RESPONSE_TOKENS, eval_pairs=EVAL_PAIRS, judge_batch=64))
  section.train.eval_batches = EVAL_PAIRS // section.data.batch_size  # every held-out pair
  return section


def get_config(preset: str = "tiny"):
  """pretrain -> SFT -> reward (VADER labels) -> judge (SFT on them) -> ai_reward (the judge's)."""
  c = pipeline.get_config(preset)
  del c.rl
  c.stages = ("pretrain", "sft", "reward", "judge", "ai_reward")
  c.reward = reward_section(preset)
  c.judge = sft.get_config(preset)
  del c.judge.upstream
  c.judge.upstream_paths = {"init_from": "sft"}
  c.judge.data.source = f"judge_pairs:{DEFAULT_ROOT}/reward"
  c.judge.train.update(dict(num_steps=300, eval_every=150, checkpoint_every=150))
  c.judge.sample.max_new_tokens = 2  # its samples: a letter and EOS, the prompts left whole
  c.ai_reward = reward_section(preset)
  c.ai_reward.preference.judge = f"{DEFAULT_ROOT}/judge"
  return c


def get_sweep() -> Sweep:
  upstream = Run("upstream", "experiments/rlaif.py:tiny", {"judge.data.source": "judge_pairs:{upstream}/reward",
                                                           "ai_reward.preference.judge": "{upstream}/judge"})
  runs = [Run(f"grpo_{name}_s{seed}", "configs/rl.py:tiny", {**RL, "reward_from": f"{{upstream}}/{stage}", "seed": seed})
          for name, stage in LABELLERS.items() for seed in SEEDS]
  return Sweep(runs=tuple(runs), upstream=upstream)


def read_json_lines(path: str) -> list:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def agreement(rows: list) -> stats.Estimate:
  """How often a pair's `chosen` is the response the gold judge scores higher (ties left out)."""
  return stats.bootstrap_mean([float(r["gold"][0] > r["gold"][1]) for r in rows if r["gold"][0] != r["gold"][1]])


def judge_table(upstream: str) -> str:
  """judge.md's tables: the labels' agreement with VADER, the reward models' held-out accuracy."""
  lines = ["| labels | pairs | VADER ties (left out) | agree with VADER's preference [95% interval] | the judge's two "
           "orders agree |", "|---|---|---|---|---|"]
  for name, stage in LABELLERS.items():
    for split in ("eval", "train"):
      rows = read_json_lines(os.path.join(upstream, stage, f"preferences_{split}.jsonl"))
      orders = f"{sum(r['orders_agree'] for r in rows) / len(rows):.3f}" if "orders_agree" in rows[0] else "-"
      ties = sum(r["gold"][0] == r["gold"][1] for r in rows)
      lines.append(f"| {LABELS[name]} | {len(rows)} {'held-out' if split == 'eval' else 'training'} | {ties} "
                   f"| {agreement(rows)} | {orders} |")
  lines += ["", "| reward model | held-out accuracy on its own labels | accuracy against VADER | correlation "
            "with VADER |", "|---|---|---|---|"]
  for name, stage in LABELLERS.items():
    with open(os.path.join(upstream, stage, "summary.json")) as f:
      summary = json.load(f)
    lines.append(f"| {stage} ({name} labels) | {summary['eval/accuracy']:.3f} | {summary['eval/gold_accuracy']:.3f} "
                 f"| {summary['eval/gold_correlation']:.3f} |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  upstream = os.path.join(flags.FLAGS.root, "upstream")
  if not os.path.isfile(os.path.join(upstream, "ai_reward", "summary.json")):
    print(f"error: {upstream} has no finished ai_reward stage: run the sweep first", file=sys.stderr)
    return 2
  table = judge_table(upstream)
  out = flags.FLAGS.out or flags.FLAGS.root
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "judge.md"), "w") as f:
    f.write(table)
  print(table)
  return 0


if __name__ == "__main__":
  flags.DEFINE_string("root", None, "the study's sweep directory", required=True)
  flags.DEFINE_string("out", "", "where judge.md goes (default: --root)")
  app.run(main)
