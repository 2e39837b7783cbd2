"""The aggregator: results table, CSV and plots from fake runs."""

import csv
import json
import os

import matplotlib.image
import numpy as np
import pytest

from rlhf_jax import aggregate


def fake_run(root, name, algo, seed, golds, kls, finished=True):
  run = root / name
  run.mkdir(parents=True)
  (run / "config.json").write_text(json.dumps({"algo": algo, "seed": seed, "stage": "ppo"}))
  rows = [{"step": 10 * (i + 1), "eval/gold_reward": g, "eval/kl": k, "eval/ref_gold_reward": 0.1,
           "eval/proxy_reward": 2 * g, "eval/response_length": 40.0, "compute/flops": 1e9 * (i + 1) * (seed + 1),
           "compute/seconds": 5.0 * (i + 1)} for i, (g, k) in enumerate(zip(golds, kls))]
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [{"step": 5, "loss": 1.0}] + rows))
  if finished:
    (run / "summary.json").write_text(json.dumps(rows[-1]))


def test_table_csv_and_plots_from_two_seeds_and_an_unfinished_run(tmp_path):
  fake_run(tmp_path, "ppo_s0", "ppo", 0, [0.3, 0.5], [1.0, 2.0])
  fake_run(tmp_path, "ppo_s1", "ppo", 1, [0.4, 0.7], [1.5, 3.0])
  fake_run(tmp_path, "dpo_s0", "dpo", 0, [0.6], [9.0], finished=False)
  fake_run(tmp_path, "dpo_s1", "dpo", 1, [0.8], [9.0], finished=False)  # stopped by a failure
  (tmp_path / "dpo_s1" / "status.json").write_text(json.dumps({"state": "failed", "step": 10, "cause": "NaN"}))
  (tmp_path / "upstream" / "sft").mkdir(parents=True)  # upstream stages have no algo: left out
  (tmp_path / "upstream" / "sft" / "config.json").write_text(json.dumps({"stage": "sft", "seed": 0}))
  (tmp_path / "upstream" / "sft" / "metrics.jsonl").write_text("")
  result = aggregate.aggregate(str(tmp_path))
  lines = result["table"].splitlines()
  assert result["runs"] == 4 and len(lines) == 4
  rows = {line.split(" | ")[0]: line for line in lines[2:]}
  # Two seeds: the mean and the interval between them (rlhf_jax/stats.py); compute: the mean.
  assert rows["| ppo"] == ("| ppo | ppo | 2 | 0.600 [0.500, 0.700] | 0.100 [0.100, 0.100] | 0.500 [0.400, 0.600] | "
                           "2.500 [2.000, 3.000] | 1.200 [1.000, 1.400] | 3 | 10 |")
  assert rows["| dpo"].startswith("| dpo | dpo | 0 (1 failed) (1 unfinished) |")
  rows = list(csv.DictReader(open(tmp_path / "results.csv")))
  assert {r["run"] for r in rows} == {"ppo_s0", "ppo_s1", "dpo_s0", "dpo_s1"}
  assert {r["run"]: r["status"] for r in rows if r["group"] == "dpo"} == {"dpo_s0": "unfinished", "dpo_s1": "failed"}
  assert [os.path.basename(p) for p in result["plots"]] == ["gold_reward_by_step.png", "gold_reward_kl_frontier.png"]
  for plot in result["plots"]:
    assert open(plot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(plot)
    assert pixels.shape[:2] == (540, 840)  # 7 x 4.5 inches at 120 dpi
    # Something is drawn: more than a blank figure's few colours, and coloured (the curves).
    colours = np.unique(pixels[..., :3].reshape(-1, 3), axis=0)
    assert len(colours) > 50 and np.any(np.ptp(pixels[..., :3], axis=-1) > 0.3)


def test_an_empty_root_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="no RL or DPO runs"):
    aggregate.aggregate(str(tmp_path))


def test_accuracy_by_flops_with_a_difference_of_groups(tmp_path):
  for seed, (grpo, ppo) in enumerate([(0.60, 0.50), (0.64, 0.52), (0.62, 0.48)]):
    for algo, final in (("grpo", grpo), ("ppo", ppo)):
      run = tmp_path / f"{algo}_s{seed}"
      run.mkdir()
      (run / "config.json").write_text(json.dumps({"algo": algo, "seed": seed}))
      rows = [{"step": s, "eval/accuracy": final * s / 20, "eval/ref_accuracy": 0.4, "eval/kl": 0.1 * s,
               "compute/flops": (4e9 if algo == "ppo" else 1e9) * s, "compute/seconds": s} for s in (10, 20)]
      (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
      (run / "summary.json").write_text(json.dumps(rows[-1]))
  result = aggregate.aggregate(str(tmp_path), x="flops", compare=[("grpo", "ppo")])  # no gold reward: accuracy
  table = result["table"]
  assert "| grpo | grpo | 3 | 0.620 [" in table and "| ppo | ppo | 3 | 0.500 [" in table and "| 20 | 20 |" in table
  difference = next(line for line in table.splitlines() if line.startswith("| grpo - ppo"))
  low, high = map(float, difference.split("[")[1].split("]")[0].split(", "))
  assert difference.startswith("| grpo - ppo | 0.120 [") and 0 < low < 0.12 < high and difference.endswith("| 3, 3 |")
  assert [os.path.basename(p) for p in result["plots"]] == ["accuracy_by_flops.png", "accuracy_kl_frontier.png"]
  with pytest.raises(ValueError, match="groups are grpo, ppo"):
    aggregate.aggregate(str(tmp_path), compare=[("grpo", "dpo")])
  with pytest.raises(ValueError, match="--x=tokens: choose one of step, flops"):
    aggregate.aggregate(str(tmp_path), x="tokens")


def test_a_training_metric_averaged_over_each_runs_iterations_is_a_column_with_its_interval(tmp_path):
  for seed, agreement in enumerate([(0.9, 0.7), (1.0, 0.8)]):
    fake_run(tmp_path, f"grpo_s{seed}", "grpo", seed, [0.5], [1.0])
    with open(tmp_path / f"grpo_s{seed}" / "metrics.jsonl", "a") as f:
      f.write("".join(json.dumps({"step": s, "rollout/router_agreement": a}) + "\n" for s, a in zip((1, 2), agreement)))
  fake_run(tmp_path, "ppo_s0", "ppo", 0, [0.5], [1.0])  # a dense policy logs none: no value
  result = aggregate.aggregate(str(tmp_path), train_metrics=("rollout/router_agreement",))
  header, _, *rows = result["table"].splitlines()
  assert header.endswith("| seconds | mean rollout/router_agreement |")
  # Each run's mean over its iterations (0.8, 0.9), then their mean and interval over the seeds.
  assert rows[0].startswith("| grpo |") and rows[0].endswith("| 0.850 [0.800, 0.900] |")
  assert rows[1].startswith("| ppo |") and rows[1].endswith("| - |")
  columns = next(csv.reader(open(tmp_path / "results.csv")))
  assert columns[-1] == "rollout/router_agreement"
