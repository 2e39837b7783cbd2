"""Reward-model over-optimisation (Gao et al. 2022's synthetic set-up) on the sentiment task:
proxy reward models trained on 256, 1024 and 4096 preference pairs labelled by the gold judge
(VADER); against each, PPO with no KL penalty for long enough to over-optimise, evaluated every
6 iterations, and best-of-n for n up to 64. Does gold rise and then fall while the proxy keeps
rising, and how does that depend on the proxy's data?

  python -m rlhf_jax.sweep --sweep=experiments/overoptimisation.py --root=runs/overoptimisation
  python -m experiments.overoptimisation --root=runs/overoptimisation \\
    [--out=experiments/results/overoptimisation]

This file is both the study's upstream pipeline (`get_config`: pretrain -> SFT -> the three
reward models, each from the same SFT policy) and its sweep (`get_sweep`); run as a script it
writes results.csv (one row per evaluation: method, proxy_pairs, seed, step, kl, gold_reward,
proxy_reward), fits.csv (Gao et al.'s forms fitted to the gold gain over SFT against
d = sqrt(KL): RL d (alpha - beta log d), best-of-n d (alpha - beta d); rlhf_jax/fits.py) and
overoptimisation.png.
"""

import json
import os
import sys

from absl import app
from absl import flags
import numpy as np

from configs import pipeline, reward
from rlhf_jax import fits, plots
from rlhf_jax.aggregate import write_csv
from rlhf_jax.sweep import Run, Sweep

PAIRS = (256, 1024, 4096)
SEEDS = (0,)
NS = (1, 2, 4, 8, 16, 32, 64)
RL = {"kl_coef": 0.0, "optim.lr": 3e-5, "train.num_steps": 120, "train.eval_every": 6, "train.checkpoint_every": 30}
COLUMNS = ("method", "proxy_pairs", "seed", "step", "kl", "gold_reward", "proxy_reward")


def get_config(preset: str = "tiny"):
  """pretrain -> SFT -> reward_N for N in PAIRS, every reward model from the SFT run."""
  c = pipeline.get_config(preset)
  del c.reward, c.rl
  c.stages = ("pretrain", "sft", *(f"reward_{n}" for n in PAIRS))
  for n in PAIRS:
    section = reward.get_config(preset)
    del section.upstream
    section.upstream_paths = {"init_from": "sft"}
    section.preference.train_pairs = n
    c[f"reward_{n}"] = section
  return c


def get_sweep() -> Sweep:
  upstream = Run("upstream", "experiments/overoptimisation.py:tiny")
  runs = []
  for n in PAIRS:
    proxy = {"init_from": "{upstream}/sft", "reward_from": f"{{upstream}}/reward_{n}"}
    runs += [Run(f"ppo_{n}_s{seed}", "configs/rl.py:tiny", {**proxy, **RL, "seed": seed}) for seed in SEEDS]
    runs.append(Run(f"best_of_n_{n}", "configs/best_of_n.py:tiny", {**proxy, "ns": NS}))
  return Sweep(runs=tuple(runs), upstream=upstream)


def read_json_lines(path: str) -> list:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def results(root: str) -> list:
  """One row per evaluation of every finished run: PPO's evals, best-of-n's n (its `step`)."""
  rows = []
  for n in PAIRS:
    for seed in SEEDS:
      run = os.path.join(root, f"ppo_{n}_s{seed}")
      if os.path.exists(os.path.join(run, "summary.json")):
        rows += [dict(method="ppo", proxy_pairs=n, seed=seed, step=r["step"], kl=r["eval/kl"],
                      gold_reward=r["eval/gold_reward"], proxy_reward=r["eval/proxy_reward"],
                      ref_gold_reward=r["eval/ref_gold_reward"])
                 for r in read_json_lines(os.path.join(run, "metrics.jsonl")) if "eval/gold_reward" in r]
    summary = os.path.join(root, f"best_of_n_{n}", "summary.json")
    if os.path.exists(summary):
      with open(summary) as f:
        best = json.load(f)["best_of_n"]
      rows += [dict(method="best_of_n", proxy_pairs=n, seed=0, step=r["n"], kl=r["kl"], gold_reward=r["gold_reward"],
                    proxy_reward=r["proxy_reward"], ref_gold_reward=best[0]["gold_reward"]) for r in best]
  return rows


def fitted(rows: list) -> list:
  """Gao et al.'s form for each (method, proxy_pairs), on the gold gain over the SFT policy."""
  out = []
  for method in ("ppo", "best_of_n"):
    for n in PAIRS:
      points = [r for r in rows if r["method"] == method and r["proxy_pairs"] == n]
      if len(points) < 2:
        continue
      fit = fits.fit("rl" if method == "ppo" else "best_of_n", [r["kl"] for r in points],
                     [r["gold_reward"] - r["ref_gold_reward"] for r in points])
      peak = fit.peak()
      out.append(dict(method=method, proxy_pairs=n, alpha=fit.alpha, beta=fit.beta, rmse=fit.rmse,
                      peak_kl=None if peak is None else peak ** 2, fit=fit))
  return out


def draw(rows: list, fit_rows: list, path: str) -> str:
  plt = plots.pyplot()
  fig, (gold_ax, proxy_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
  colours = dict(zip(PAIRS, ("tab:blue", "tab:orange", "tab:green")))
  for row in fit_rows:
    points = [r for r in rows if r["method"] == row["method"] and r["proxy_pairs"] == row["proxy_pairs"]]
    d = np.sqrt([r["kl"] for r in points])
    marker, style = ("o", "-") if row["method"] == "ppo" else ("s", "--")
    label = f"{row['method']}, {row['proxy_pairs']} pairs"
    colour = colours[row["proxy_pairs"]]
    gold_ax.scatter(d, [r["gold_reward"] - r["ref_gold_reward"] for r in points], marker=marker, color=colour, s=12)
    grid = np.linspace(1e-3, d.max(), 200)
    gold_ax.plot(grid, row["fit"](grid), style, color=colour, label=label)
    proxy_ax.plot(d, [r["proxy_reward"] for r in points], marker=marker, linestyle=style, color=colour, label=label,
                  markersize=3)
  gold_ax.set(xlabel="sqrt(KL to SFT), sqrt(nats)", ylabel="gold reward gain over SFT (VADER)",
              title="Gold: points and Gao et al.'s fitted forms")
  proxy_ax.set(xlabel="sqrt(KL to SFT), sqrt(nats)", ylabel="proxy reward (normalised RM score)",
               title="Proxy reward")
  for ax in (gold_ax, proxy_ax):
    ax.legend(fontsize=7)
  return plots.save(fig, path)


def analyse(root: str, out: str) -> dict:
  rows = results(root)
  if not rows:
    raise ValueError(f"no finished runs of the study under {root}")
  os.makedirs(out, exist_ok=True)
  write_csv(rows, os.path.join(out, "results.csv"), COLUMNS)
  fit_rows = fitted(rows)
  write_csv(fit_rows, os.path.join(out, "fits.csv"), ("method", "proxy_pairs", "alpha", "beta", "rmse", "peak_kl"))
  return {"rows": len(rows), "fits": fit_rows, "plot": draw(rows, fit_rows, os.path.join(out, "overoptimisation.png"))}


def main(argv):
  del argv
  try:
    result = analyse(flags.FLAGS.root, flags.FLAGS.out or flags.FLAGS.root)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for row in result["fits"]:
    peak = "never turns down" if row["peak_kl"] is None else f"gold peaks at KL {row['peak_kl']:.2f}"
    print(f"{row['method']:<10} {row['proxy_pairs']:>5} pairs: alpha {row['alpha']:.3f}, beta {row['beta']:.3f}, "
          f"rmse {row['rmse']:.3f}, {peak}")
  print(f"wrote results.csv, fits.csv, {result['plot']}")
  return 0


if __name__ == "__main__":
  flags.DEFINE_string("root", None, "the study's sweep directory", required=True)
  flags.DEFINE_string("out", "", "where results.csv, fits.csv and the plot go (default: --root)")
  app.run(main)
