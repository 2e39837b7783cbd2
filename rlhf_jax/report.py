"""report.png: a run's curves at a glance, written at the end of every stage and pipeline.

One row of panels per stage: the training and held-out loss by step; the reward model's
accuracy; an RL or DPO policy's gold reward, proxy reward and KL by step, the policy against
its SFT reference. The curves come from each stage's metrics.jsonl and are drawn by the
aggregator's plotting code (`plots`).
"""

import json
import os

import jax

from rlhf_jax import plots

LOSS = ("loss", [("train", "loss", "-"), ("held out", "eval/loss", "-o")])
ACCURACY = ("pair accuracy", [("train", "accuracy", "-"), ("held out", "eval/accuracy", "-o")])
POLICY = [("gold reward", [("policy", "eval/gold_reward", "-o"), ("SFT reference", "eval/ref_gold_reward", "--")]),
          ("proxy reward", [("policy", "eval/proxy_reward", "-o"), ("SFT reference", "eval/ref_proxy_reward", "--"),
                            ("rollout score", "score", "-")]),
          ("KL to the reference (nats)", [("held out", "eval/kl", "-o"), ("rollout", "kl", "-")])]
PANEL_INCHES, DPI = (4.2, 3.2), 100
# Each stage's panels: (title, [(label, metric, line style), ...]).
PANELS = {"pretrain": [LOSS], "sft": [LOSS], "reward": [LOSS, ACCURACY], "rl": POLICY,
          "dpo": [("loss", [("train", "loss", "-")]), *POLICY]}


def read_rows(run_dir: str) -> list:
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def write_report(stages: list, path: str) -> str | None:
  """Draws `stages`, a list of (name, stage, run directory), into `path` (process 0 only);
  returns the path, or None when no stage has logged anything."""
  rows = [(name, stage, read_rows(run_dir)) for name, stage, run_dir in stages]
  rows = [(name, stage, r) for name, stage, r in rows if r and stage in PANELS]
  if not rows or jax.process_index() != 0:
    return None
  plt = plots.pyplot()
  columns = max(len(PANELS[stage]) for _, stage, _ in rows)
  size = (PANEL_INCHES[0] * columns, PANEL_INCHES[1] * len(rows))
  fig, axes = plt.subplots(len(rows), columns, figsize=size, squeeze=False)
  for (name, stage, metrics), row_axes in zip(rows, axes):
    for ax, (title, lines) in zip(row_axes, PANELS[stage]):
      curves = [plots.Curve(label, *plots.series(metrics, key), style=style) for label, key, style in lines]
      plots.draw_curves(ax, [c for c in curves if c.x], "step", title, f"{name}: {title}")
    for ax in row_axes[len(PANELS[stage]):]:
      ax.axis("off")
  return plots.save(fig, path, dpi=DPI)
