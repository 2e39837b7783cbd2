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
          ("accuracy", [("policy", "eval/accuracy", "-o"), ("SFT reference", "eval/ref_accuracy", "--")]),
          ("proxy reward", [("policy", "eval/proxy_reward", "-o"), ("SFT reference", "eval/ref_proxy_reward", "--"),
                            ("rollout score", "score", "-")]),
          ("KL to the reference (nats)", [("held out", "eval/kl", "-o"), ("rollout", "kl", "-")])]
PANEL_INCHES, DPI = (4.2, 3.2), 100
# Each stage's panels: (title, [(label, metric, line style), ...]); a panel none of whose
# metrics a run logged is left out (a verifiable task has no gold judge, the sentiment task no
# accuracy).
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
  rows = []
  for name, stage, run_dir in stages:
    metrics = read_rows(run_dir)
    panels = [(title, [(label, plots.series(metrics, key), style) for label, key, style in lines])
              for title, lines in PANELS.get(stage, ())]
    panels = [(title, lines) for title, lines in panels if any(x for _, (x, _), _ in lines)]
    if panels:
      rows.append((name, panels))
  if not rows or jax.process_index() != 0:
    return None
  plt = plots.pyplot()
  columns = max(len(panels) for _, panels in rows)
  size = (PANEL_INCHES[0] * columns, PANEL_INCHES[1] * len(rows))
  fig, axes = plt.subplots(len(rows), columns, figsize=size, squeeze=False)
  for (name, panels), row_axes in zip(rows, axes):
    for ax, (title, lines) in zip(row_axes, panels):
      curves = [plots.Curve(label, x, y, style=style) for label, (x, y), style in lines if x]
      plots.draw_curves(ax, curves, "step", title, f"{name}: {title}")
    for ax in row_axes[len(panels):]:
      ax.axis("off")
  return plots.save(fig, path, dpi=DPI)
