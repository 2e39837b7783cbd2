"""Best-of-n: its KL formula, its unbiased selection over n-subsets, and the stage end to end."""

import itertools
import json
import math

import numpy as np
import pytest

from configs import best_of_n as best_of_n_config
from rlhf_jax import stages
from rlhf_jax.training.policy import best_of_n


def test_kl_is_log_n_less_n_minus_one_over_n():
  assert best_of_n.kl_of(1) == 0.0
  assert best_of_n.kl_of(2) == pytest.approx(math.log(2) - 0.5)
  assert best_of_n.kl_of(64) == pytest.approx(math.log(64) - 63 / 64)


def test_the_weights_average_the_best_of_every_n_subset():
  rng = np.random.default_rng(0)
  proxy, gold = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
  for n in range(1, 7):
    weights = best_of_n.best_of_n_weights(proxy, n)
    np.testing.assert_allclose(weights.sum(1), 1.0)
    by_hand = [np.mean([gold[p, max(subset, key=lambda i: proxy[p, i])]  # every n-subset's proxy-best
                        for subset in itertools.combinations(range(6), n)]) for p in range(5)]
    np.testing.assert_allclose((weights * gold).sum(1), by_hand)
  np.testing.assert_allclose(best_of_n.best_of_n_weights(proxy, 1), 1 / 6)  # n = 1: the plain mean
  np.testing.assert_array_equal(best_of_n.best_of_n_weights(proxy, 6).argmax(1), proxy.argmax(1))  # n = N: the best
  with pytest.raises(ValueError, match="n=7 needs 1 <= n <= 6"):
    best_of_n.best_of_n_weights(proxy, 7)


def test_the_stage_reports_gold_proxy_and_kl_for_every_n(tiny_upstream, tmp_path):
  cfg = best_of_n_config.get_config("tiny")
  cfg.update(dict(ns=(1, 2, 4), eval_prompts=8, **tiny_upstream))
  cfg.model.update(dict(d_model=64, n_layers=2, n_heads=4, d_ff=128, max_len=64))  # the upstream's shape
  cfg.sample.max_new_tokens = 16
  summary = stages.run(cfg, str(tmp_path))
  rows = summary["best_of_n"]
  assert [r["n"] for r in rows] == [1, 2, 4] and [r["kl"] for r in rows] == [best_of_n.kl_of(n) for n in (1, 2, 4)]
  assert rows[0]["gold_reward"] == pytest.approx(summary["eval/ref_gold_reward"])  # n = 1 is the SFT policy
  assert rows[0]["proxy_reward"] <= rows[1]["proxy_reward"] <= rows[2]["proxy_reward"]  # more choice, higher proxy
  assert summary["samples_per_prompt"] == 4 and summary["prompts"] == 8
  logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in logged] == [1, 2, 4] and logged[2]["eval/gold_reward"] == rows[2]["gold_reward"]
  assert not (tmp_path / "upstream").exists()  # it sampled the given runs
