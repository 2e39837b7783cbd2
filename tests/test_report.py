"""report.png: one row of panels per stage, each with the curves its metrics log has."""

import json

import matplotlib.image
import numpy as np

from rlhf_jax import report


def fake_run(directory, rows):
  directory.mkdir()
  (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(directory)


def test_the_report_draws_a_row_per_stage_with_the_policy_against_its_reference(tmp_path):
  reward = fake_run(tmp_path / "reward", [{"step": s, "loss": 1 / s, "accuracy": 0.5 + s / 20} for s in (1, 2, 3)]
                    + [{"step": 3, "eval/loss": 0.5, "eval/accuracy": 0.7}])
  rl = fake_run(tmp_path / "rl", [{"step": s, "score": s / 10, "kl": s / 5} for s in (1, 2, 3, 4)]
                + [{"step": s, "eval/gold_reward": 0.2 * s, "eval/ref_gold_reward": 0.1, "eval/kl": s / 4,
                    "eval/proxy_reward": s / 3, "eval/ref_proxy_reward": 0.0} for s in (0, 2, 4)])
  path = report.write_report([("reward", "reward", reward), ("rl", "rl", rl), ("none", "sft", str(tmp_path))],
                             str(tmp_path / "report.png"))
  pixels = matplotlib.image.imread(path)
  # Two stages with metrics (the third has none) by three panels, at the report's size.
  assert pixels.shape[:2] == (2 * 320, 3 * 420)
  rl_row = pixels[320:, :, :3]
  assert len(np.unique(rl_row.reshape(-1, 3), axis=0)) > 50 and np.any(np.ptp(rl_row, axis=-1) > 0.3)
  assert report.write_report([("none", "sft", str(tmp_path))], str(tmp_path / "empty.png")) is None
