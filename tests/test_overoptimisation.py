"""The over-optimisation study's pipeline, sweep and analysis (on fake runs with known curves)."""

import csv
import json
import math

import pytest

from experiments import overoptimisation as study
from rlhf_jax import stages
from rlhf_jax.training.policy.best_of_n import kl_of


def test_every_reward_model_starts_from_the_one_sft_run():
  config = study.get_config("tiny")
  stages.check_all(config)
  assert config.stages == ("pretrain", "sft", "reward_256", "reward_1024", "reward_4096")
  assert [config[f"reward_{n}"].preference.train_pairs for n in study.PAIRS] == [256, 1024, 4096]
  runs = {run.name: run for run in study.get_sweep().runs}
  assert runs["ppo_1024_s0"].overrides["reward_from"] == "{upstream}/reward_1024"
  assert runs["ppo_1024_s0"].overrides["kl_coef"] == 0.0 and runs["best_of_n_256"].overrides["ns"] == study.NS


def fake_runs(root):
  """PPO's gold gain d (0.5 - 0.25 log d) and best-of-n's d (0.6 - 0.2 d), over an SFT gold of 0.1."""
  ppo = root / "ppo_256_s0"
  ppo.mkdir(parents=True)
  rows = []
  for step in range(6, 121, 6):
    kl = 0.05 * step
    d = math.sqrt(kl)
    rows.append({"step": step, "eval/kl": kl, "eval/gold_reward": 0.1 + d * (0.5 - 0.25 * math.log(d)),
                 "eval/proxy_reward": 0.2 * step, "eval/ref_gold_reward": 0.1})
  (ppo / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [{"step": 6, "loss": 1.0}] + rows))
  (ppo / "summary.json").write_text(json.dumps(rows[-1]))
  best = root / "best_of_n_256"
  best.mkdir()
  bon = [{"n": n, "kl": kl_of(n), "gold_reward": 0.1 + math.sqrt(kl_of(n)) * (0.6 - 0.2 * math.sqrt(kl_of(n))),
          "proxy_reward": 0.1 * n} for n in study.NS]
  (best / "summary.json").write_text(json.dumps({"best_of_n": bon}))


def test_analysis_writes_one_row_per_evaluation_and_recovers_the_forms(tmp_path):
  fake_runs(tmp_path / "root")
  result = study.analyse(str(tmp_path / "root"), str(tmp_path / "out"))
  rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
  assert list(rows[0]) == list(study.COLUMNS) and result["rows"] == len(rows) == 20 + len(study.NS)
  assert {r["method"] for r in rows} == {"ppo", "best_of_n"} and {r["proxy_pairs"] for r in rows} == {"256"}
  fitted = {row["method"]: row for row in result["fits"]}
  assert (fitted["ppo"]["alpha"], fitted["ppo"]["beta"]) == pytest.approx((0.5, 0.25), abs=1e-6)
  assert (fitted["best_of_n"]["alpha"], fitted["best_of_n"]["beta"]) == pytest.approx((0.6, 0.2), abs=1e-6)
  assert fitted["ppo"]["peak_kl"] == pytest.approx(math.exp(0.5 / 0.25 - 1) ** 2)  # gold peaks, then falls
  assert len(list(csv.DictReader(open(tmp_path / "out" / "fits.csv")))) == 2
  assert open(result["plot"], "rb").read(4) == b"\x89PNG"
  with pytest.raises(ValueError, match="no finished runs"):
    study.analyse(str(tmp_path / "empty"), str(tmp_path / "out"))
