"""Collects a sweep's runs into results.csv, results.md (means over seeds with 95% bootstrap
intervals) and plots.

  python -m rlhf_jax.aggregate --root=runs/showcase [--metric=accuracy] [--x=flops]
      [--compare=grpo:ppo --compare=rloo:ppo] [--train_metric=rollout/router_agreement]

Every directory under ROOT with a config.json and a metrics.jsonl is a run (the shared
upstream's stages have no `algo` and are left out). Runs that differ only in their seed form a
group, named by the run name without its "_s<seed>" suffix. The measure (`--metric`) is the
gold judge's reward, or on a verifiable task the accuracy (or any other eval metric: mean@4,
greedy_accuracy, ...); the table gives each group's seeds and every column's mean and interval
(rlhf_jax/stats.py), the gain over SFT paired by seed (each run's measure minus the SFT policy's
in the same evaluation, whose draws the seed sets), and `--compare=A:B` the difference of group
A's mean from group B's with its interval. `--train_metric=NAME` adds a column: a training
metric's mean over each run's logged iterations (e.g. rollout/router_agreement), its interval
over the seeds. Plots: the measure against `--x` (step, flops, samples, seconds of compute, or
kl) per group (mean over seeds at each evaluation, band from min to max), and against KL to
the reference at every eval of every run (the reward-KL frontier).
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

from rlhf_jax import plots, stats
from rlhf_jax.plots import pyplot
from rlhf_jax.workdir import RunDir

# --x: where each eval row says how far along the run is.
X_AXES = {"step": "step", "flops": "compute/flops", "samples": "compute/samples", "seconds": "compute/seconds",
          "kl": "eval/kl"}
X_LABELS = {"step": "training step (iteration; DPO: pair batch)", "flops": "model FLOPs of training",
            "samples": "responses generated", "seconds": "seconds of training", "kl": "KL(policy || SFT), nats"}
VALUES = ("metric", "ref_metric", "kl", "proxy_reward", "response_length", "flops", "seconds")
COLUMNS = ("run", "group", "algo", "seed", "status", "step", *VALUES)


def default_metric(root: str) -> str:
  """The gold judge's reward where runs have one, else a verifiable task's accuracy."""
  for path in glob.glob(os.path.join(root, "**", "summary.json"), recursive=True):
    with open(path) as f:
      if "eval/gold_reward" in json.load(f):
        return "gold_reward"
  return "accuracy"


def read_run(directory: str, metric: str, train_metrics=()) -> dict | None:
  """One run's config, final values (its summary, if finished; else its last eval), eval rows
  and each of `train_metrics`' mean over the rows that log it; None if it is not an RL/DPO run."""
  with open(os.path.join(directory, "config.json")) as f:
    config = json.load(f)
  if "algo" not in config:
    return None
  with open(os.path.join(directory, "metrics.jsonl")) as f:
    rows = list(map(json.loads, f))
  evals = [row for row in rows if f"eval/{metric}" in row]
  trained = {name: np.mean(stats.clean([row.get(name) for row in rows])) if any(name in row for row in rows)
             else None for name in train_metrics}
  summary_path = os.path.join(directory, "summary.json")
  finished = os.path.exists(summary_path)
  if finished:
    with open(summary_path) as f:
      final = json.load(f)
  else:
    final = evals[-1] if evals else {}
  last_eval = evals[-1] if evals else {}
  name = os.path.basename(directory)
  failed = RunDir(directory).status().get("state") == "failed"  # its last eval is no result
  return {"run": name, "group": re.sub(r"_s\d+$", "", name), "algo": config["algo"], "seed": config["seed"],
          "status": "finished" if finished else "failed" if failed else "unfinished", "step": final.get("step", 0),
          "metric": final.get(f"eval/{metric}"), "ref_metric": final.get(f"eval/ref_{metric}"),
          "kl": final.get("eval/kl"), "proxy_reward": final.get("eval/proxy_reward"),
          "response_length": final.get("eval/response_length"),
          "flops": last_eval.get("compute/flops"), "seconds": last_eval.get("compute/seconds"), "evals": evals,
          **trained}


def read_runs(root: str, metric: str, train_metrics=()) -> list:
  paths = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(root, "**", "config.json"), recursive=True))
  runs = [read_run(p, metric, train_metrics) for p in paths if os.path.exists(os.path.join(p, "metrics.jsonl"))]
  return [r for r in runs if r is not None]


def groups_of(runs: list) -> dict:
  groups = collections.defaultdict(list)
  for run in runs:
    groups[run["group"]].append(run)
  return groups


def write_csv(runs: list, path: str, columns=COLUMNS) -> None:
  """One row per dict of `runs`, the `columns` of each."""
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(runs)


def markdown_table(runs: list, metric: str, compare=(), train_metrics=()) -> str:
  """Per group: finished seeds and each value's mean [95% bootstrap interval] (`train_metrics`'
  last; the gain over SFT is each seed's measure minus the SFT policy's in the same evaluation,
  paired); then each `compare` pair's difference of means."""
  groups = groups_of(runs)
  columns = [metric, f"SFT {metric}", "gain over SFT", "KL to SFT (nats)", "proxy reward", "GFLOP", "seconds",
             *(f"mean {name}" for name in train_metrics)]
  lines = ["| run | algo | seeds | " + " | ".join(columns) + " |", "|---|---|---|" + "---|" * len(columns)]
  finished = {name: [r for r in members if r["status"] == "finished"] for name, members in groups.items()}
  for name, members in groups.items():
    done = finished[name]
    failed = sum(r["status"] == "failed" for r in members)
    unfinished = len(members) - len(done) - failed
    note = "".join(f" ({n} {word})" for n, word in ((failed, "failed"), (unfinished, "unfinished")) if n)
    metric, ref_metric, kl, proxy = ([r[k] for r in done] for k in ("metric", "ref_metric", "kl", "proxy_reward"))
    gains = [gain(r) for r in done]  # paired: each seed against its own SFT draw
    cells = [stats.bootstrap_mean(values) for values in (metric, ref_metric, gains, kl, proxy)]
    compute = [np.mean(stats.clean([r[k] for r in done])) if done else np.nan for k in ("flops", "seconds")]
    trained = "".join(f" {stats.bootstrap_mean([r[k] for r in done])} |" for k in train_metrics)
    lines.append(f"| {name} | {members[0]['algo']} | {len(done)}{note} | " + " | ".join(map(str, cells))
                 + f" | {compute[0] / 1e9:.3g} | {compute[1]:.0f} |" + trained)
  if compare:
    lines += ["", f"| difference in {metric} | mean [95% interval] | seeds |", "|---|---|---|"]
  for a, b in compare:
    if a not in groups or b not in groups:
      raise ValueError(f"--compare={a}:{b}: groups are {', '.join(groups)}")
    difference = stats.bootstrap_difference([r["metric"] for r in finished[a]], [r["metric"] for r in finished[b]])
    lines.append(f"| {a} - {b} | {difference} | {len(finished[a])}, {len(finished[b])} |")
  return "\n".join(lines) + "\n"


def gain(run: dict):
  """The run's measure minus the SFT policy's in the same evaluation (None without both)."""
  if run["metric"] is None or run["ref_metric"] is None:
    return None
  return run["metric"] - run["ref_metric"]


def plot(runs: list, root: str, metric: str, x: str = "step") -> list:
  """{metric}_by_{x}.png and {metric}_kl_frontier.png; returns their paths."""
  plt = pyplot()
  curves = []
  for name, members in groups_of(runs).items():
    steps, mean, low, high = plots.mean_band([r["evals"] for r in members], f"eval/{metric}")
    where = plots.mean_band([r["evals"] for r in members], X_AXES[x])[1] if x != "step" else steps
    curves.append(plots.Curve(f"{name} ({len(members)} seeds)", where, mean, low, high))
  fig, ax = plt.subplots(figsize=(7, 4.5))
  plots.draw_curves(ax, curves, X_LABELS[x], metric, f"{metric} of held-out prompts")
  by_x = plots.save(fig, os.path.join(root, f"{metric}_by_{x}.png"))

  fig, ax = plt.subplots(figsize=(7, 4.5))
  colors = {}
  for run in runs:
    kl = [row.get("eval/kl") for row in run["evals"]]
    values = [row[f"eval/{metric}"] for row in run["evals"]]
    label = None if run["algo"] in colors else run["algo"]
    points = ax.scatter(kl, values, label=label, color=colors.get(run["algo"]), alpha=0.8)
    colors.setdefault(run["algo"], points.get_facecolor()[0])
  ax.set(xlabel="KL(policy || SFT reference), nats per completion", ylabel=metric,
         title=f"{metric} against KL: every eval of every run")
  ax.legend(fontsize=8)
  return [by_x, plots.save(fig, os.path.join(root, f"{metric}_kl_frontier.png"))]


def aggregate(root: str, metric: str = "", x: str = "step", compare=(), train_metrics=()) -> dict:
  """results.csv, results.md and the plots; `compare` holds (group, group) pairs, `train_metrics`
  the training metrics averaged over each run's iterations."""
  if x not in X_AXES:
    raise ValueError(f"--x={x}: choose one of {', '.join(X_AXES)}")
  metric = metric or default_metric(root)
  runs = read_runs(root, metric, train_metrics)
  if not runs:
    raise ValueError(f"no RL or DPO runs under {root}")
  write_csv(runs, os.path.join(root, "results.csv"), COLUMNS + tuple(train_metrics))
  table = markdown_table(runs, metric, compare, train_metrics)
  with open(os.path.join(root, "results.md"), "w") as f:
    f.write(table)
  return {"runs": len(runs), "table": table, "plots": plot(runs, root, metric, x)}


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    pairs = [tuple(pair.split(":")) for pair in f.compare]
    if any(len(pair) != 2 for pair in pairs):
      raise ValueError(f"--compare takes GROUP:GROUP, not {f.compare}")
    result = aggregate(f.root, f.metric, f.x, pairs, tuple(f.train_metric))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(result["table"])
  print("wrote results.csv, results.md, " + ", ".join(os.path.basename(p) for p in result["plots"]))
  return 0


if __name__ == "__main__":
  flags.DEFINE_string("root", None, "the sweep's directory", required=True)  # only when run as a command
  flags.DEFINE_string("metric", "", "the eval metric compared (default: gold_reward, else accuracy)")
  flags.DEFINE_string("x", "step", f"the curves' x-axis: {', '.join(X_AXES)}")
  flags.DEFINE_multi_string("compare", [], "GROUP:GROUP, the difference of their means with its interval")
  flags.DEFINE_multi_string("train_metric", [], "a training metric's mean over each run's iterations, as a column")
  app.run(main)
