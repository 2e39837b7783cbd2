"""Collects a sweep's runs into results.csv, results.md (mean and spread over seeds) and plots.

  python -m rlhf_jax.aggregate --root=runs/showcase

Every directory under ROOT with a config.json and a metrics.jsonl is a run (the shared
upstream's stages have no `algo` and are left out). Runs that differ only in their seed form a
group, named by the run name without its "_s<seed>" suffix. Plots: gold reward per eval step
per group (mean over seeds, band from min to max), and gold reward against KL to the reference
at every eval of every run (the reward-KL frontier of the DPO paper's sentiment experiment).
"""

import collections
import csv
import glob
import json
import os
import re
import sys

from absl import app
from absl import flags
import numpy as np

from rlhf_jax import plots
from rlhf_jax.plots import pyplot

COLUMNS = ("run", "group", "algo", "seed", "status", "step", "gold_reward", "ref_gold_reward", "kl", "proxy_reward",
           "response_length")


def read_run(directory: str) -> dict | None:
  """One run's config, final summary (if finished) and eval rows; None if it is not an RL/DPO run."""
  with open(os.path.join(directory, "config.json")) as f:
    config = json.load(f)
  if "algo" not in config:
    return None
  with open(os.path.join(directory, "metrics.jsonl")) as f:
    evals = [row for row in map(json.loads, f) if "eval/gold_reward" in row]
  summary_path = os.path.join(directory, "summary.json")
  finished = os.path.exists(summary_path)
  if finished:
    with open(summary_path) as f:
      final = json.load(f)
  else:
    final = evals[-1] if evals else {}
  name = os.path.basename(directory)
  return {"run": name, "group": re.sub(r"_s\d+$", "", name), "algo": config["algo"], "seed": config["seed"],
          "status": "finished" if finished else "unfinished", "step": final.get("step", 0),
          "gold_reward": final.get("eval/gold_reward"), "ref_gold_reward": final.get("eval/ref_gold_reward"),
          "kl": final.get("eval/kl"), "proxy_reward": final.get("eval/proxy_reward"),
          "response_length": final.get("eval/response_length"), "evals": evals}


def read_runs(root: str) -> list:
  paths = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(root, "**", "config.json"), recursive=True))
  runs = [read_run(p) for p in paths if os.path.exists(os.path.join(p, "metrics.jsonl"))]
  return [r for r in runs if r is not None]


def write_csv(runs: list, path: str) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(runs)


def spread(values) -> str:
  """mean ± std over seeds (std with n - 1; just the value for one seed)."""
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  if len(values) == 1:
    return f"{values[0]:.3f}"
  return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def markdown_table(runs: list) -> str:
  groups = collections.defaultdict(list)
  for run in runs:
    groups[run["group"]].append(run)
  lines = ["| run | algo | seeds | gold reward | SFT gold reward | KL to SFT (nats) | proxy reward |",
           "|---|---|---|---|---|---|---|"]
  for name, members in groups.items():
    finished = [r for r in members if r["status"] == "finished"]
    note = "" if len(finished) == len(members) else f" ({len(members) - len(finished)} unfinished)"
    lines.append(f"| {name} | {members[0]['algo']} | {len(finished)}{note} | "
                 + " | ".join(spread([r[k] for r in finished]) for k in ("gold_reward", "ref_gold_reward", "kl",
                                                                           "proxy_reward")) + " |")
  return "\n".join(lines) + "\n"


def plot(runs: list, root: str) -> list:
  """gold_reward_by_step.png and reward_kl_frontier.png; returns their paths."""
  plt = pyplot()
  groups = collections.defaultdict(list)
  for run in runs:
    groups[run["group"]].append(run)
  curves = []
  for name, members in groups.items():
    steps, mean, low, high = plots.mean_band([r["evals"] for r in members], "eval/gold_reward")
    curves.append(plots.Curve(f"{name} ({len(members)} seeds)", steps, mean, low, high))
  fig, ax = plt.subplots(figsize=(7, 4.5))
  plots.draw_curves(ax, curves, "training step (iteration; DPO: pair batch)", "gold reward (VADER)",
                    "Gold reward of held-out completions")
  by_step = plots.save(fig, os.path.join(root, "gold_reward_by_step.png"))

  fig, ax = plt.subplots(figsize=(7, 4.5))
  colors = {}
  for run in runs:
    kl = [row["eval/kl"] for row in run["evals"]]
    gold = [row["eval/gold_reward"] for row in run["evals"]]
    label = None if run["algo"] in colors else run["algo"]
    points = ax.scatter(kl, gold, label=label, color=colors.get(run["algo"]), alpha=0.8)
    colors.setdefault(run["algo"], points.get_facecolor()[0])
  ax.set(xlabel="KL(policy || SFT reference), nats per completion", ylabel="gold reward (VADER)",
         title="Reward-KL frontier: every eval of every run")
  ax.legend(fontsize=8)
  return [by_step, plots.save(fig, os.path.join(root, "reward_kl_frontier.png"))]


def aggregate(root: str) -> dict:
  runs = read_runs(root)
  if not runs:
    raise ValueError(f"no RL or DPO runs under {root}")
  write_csv(runs, os.path.join(root, "results.csv"))
  table = markdown_table(runs)
  with open(os.path.join(root, "results.md"), "w") as f:
    f.write(table)
  return {"runs": len(runs), "table": table, "plots": plot(runs, root)}


def main(argv):
  del argv
  try:
    result = aggregate(flags.FLAGS.root)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(result["table"])
  print("wrote results.csv, results.md, " + ", ".join(os.path.basename(p) for p in result["plots"]))
  return 0


if __name__ == "__main__":
  flags.DEFINE_string("root", None, "the sweep's directory", required=True)  # only when run as a command
  app.run(main)
