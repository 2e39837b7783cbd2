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
           "eval/proxy_reward": 2 * g, "eval/response_length": 40.0} for i, (g, k) in enumerate(zip(golds, kls))]
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [{"step": 5, "loss": 1.0}] + rows))
  if finished:
    (run / "summary.json").write_text(json.dumps(rows[-1]))


def test_table_csv_and_plots_from_two_seeds_and_an_unfinished_run(tmp_path):
  fake_run(tmp_path, "ppo_s0", "ppo", 0, [0.3, 0.5], [1.0, 2.0])
  fake_run(tmp_path, "ppo_s1", "ppo", 1, [0.4, 0.7], [1.5, 3.0])
  fake_run(tmp_path, "dpo_s0", "dpo", 0, [0.6], [9.0], finished=False)
  (tmp_path / "upstream" / "sft").mkdir(parents=True)  # upstream stages have no algo: left out
  (tmp_path / "upstream" / "sft" / "config.json").write_text(json.dumps({"stage": "sft", "seed": 0}))
  (tmp_path / "upstream" / "sft" / "metrics.jsonl").write_text("")
  result = aggregate.aggregate(str(tmp_path))
  lines = result["table"].splitlines()
  assert result["runs"] == 3 and len(lines) == 4
  rows = {line.split(" | ")[0]: line for line in lines[2:]}
  # Mean and sample std over the two seeds: gold (0.5, 0.7) -> 0.600 ± 0.141; KL (2, 3) -> 2.500 ± 0.707.
  assert rows["| ppo"] == "| ppo | ppo | 2 | 0.600 ± 0.141 | 0.100 ± 0.000 | 2.500 ± 0.707 | 1.200 ± 0.283 |"
  assert rows["| dpo"].startswith("| dpo | dpo | 0 (1 unfinished) |")
  rows = list(csv.DictReader(open(tmp_path / "results.csv")))
  assert {r["run"] for r in rows} == {"ppo_s0", "ppo_s1", "dpo_s0"}
  assert [r["status"] for r in rows if r["run"] == "dpo_s0"] == ["unfinished"]
  assert [os.path.basename(p) for p in result["plots"]] == ["gold_reward_by_step.png", "reward_kl_frontier.png"]
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
