"""The benchmark harness: FLOP counts against XLA's, the roofline arithmetic, and one real run."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import limits, run, workloads
from rlhf_jax import flops
from rlhf_jax.data import batches
from rlhf_jax.models.config import ModelConfig
from rlhf_jax.models.transformer import Transformer
from tests.data.test_batches import TOK

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ModelConfig.from_dict(workloads.TINY_GPT2)


def xla_flops(fn, *args) -> float:
  return jax.jit(fn).lower(*args).compile().cost_analysis()["flops"]


@pytest.mark.parametrize("logits", [True, False])
def test_forward_flops_match_what_xla_counts(logits):
  """Matmuls are most of a forward pass: XLA's count (every op) is within a few % above ours."""
  model = Transformer(TINY)
  tokens = jnp.ones((8, 48), jnp.int32)
  params = model.init(jax.random.key(0), tokens)["params"]
  ours = flops.forward(TINY, 8, 48, logits)
  theirs = xla_flops(lambda p, t: model.apply({"params": p}, t, with_logits=logits), params, tokens)
  assert ours <= theirs <= 1.15 * ours, (ours, theirs)


def test_a_reward_models_scoring_pass_counts_its_last_block_at_the_scored_token():
  model = Transformer(TINY)
  tokens = jnp.ones((8, 48), jnp.int32)
  params = model.init(jax.random.key(0), tokens)["params"]
  ours = flops.score(TINY, 8, 48)
  last = jnp.full((8, 1), 47)
  theirs = xla_flops(lambda p, t: model.apply({"params": p}, t, query_index=last, with_logits=False).hidden, params,
                     tokens)
  assert ours <= theirs <= 1.15 * ours, (ours, theirs)
  assert flops.score(TINY, 8, 48, queries=48) == pytest.approx(flops.forward(TINY, 8, 48, logits=False))
  assert ours < 0.8 * flops.forward(TINY, 8, 48, logits=False)  # most of 1 layer in 4: all but its keys and values


def test_training_is_three_forwards_and_generation_counts_the_cache():
  assert flops.train(TINY, 4, 48) == 3 * flops.forward(TINY, 4, 48)
  # Decoding token i attends to prompt + i + 1 keys; the weights cost the same at every step.
  per_token = 2 * flops.matmul_weights(TINY)
  attention = 4 * TINY.n_layers * TINY.d_model
  expected = flops.forward(TINY, 2, 16) + sum(2 * (per_token + attention * (17 + i)) for i in range(3))
  assert flops.generate(TINY, 2, 16, 4) == expected


def test_decode_roofline_is_weights_and_the_filled_cache_over_bandwidth(monkeypatch):
  cfg = ModelConfig.from_dict(workloads.TINY_GPT2, dtype="bfloat16")
  monkeypatch.setattr(limits, "bandwidth", lambda: 1e9)
  info = dict(rows=2, prompt_len=3, new_tokens=2, generated_tokens=4)
  out = limits.decode_roofline(cfg, info, seconds=1.0)
  weights = flops.matmul_weights(cfg) * 2  # bf16
  kv_per_position = 2 * cfg.n_layers * cfg.d_model * 2 * 2  # keys + values, bf16, 2 rows
  expected = (2 * weights + kv_per_position * (3 + 4)) / 1e9
  np.testing.assert_allclose(out["roofline_s"], expected)
  np.testing.assert_allclose(out["fraction_of_roofline"], expected)


def test_the_shared_prompt_workload_lays_a_pair_out_as_the_batcher_does():
  rng = np.random.default_rng(0)
  prompt, chosen, rejected = (rng.integers(3, 250, n).tolist() for n in (15, 31, 31))
  data = batches.PreferenceData([(prompt, chosen, rejected)], TOK, 48, 1, 0, shuffle=False, pack=True,
                                share_prompt=True)
  packed = data.rows(np.arange(1))
  whole = lambda response: np.array([[TOK.bos_id, *prompt, *response, TOK.eos_id]], np.int32)
  rows = workloads.shared_pair_rows({"chosen": whole(chosen), "rejected": whole(rejected),
                                     "loss_mask": np.ones((1, 1), np.int32)}, prompt_len=16)
  width = rows["tokens"].shape[1]
  assert width == 16 + 2 * 32 + 1 and not packed["mask"][:, width:].any()
  for key, value in rows.items():
    np.testing.assert_array_equal(value, packed[key][:, :width], err_msg=key)


def test_the_peer_figures_merge_as_a_ratio():
  ours = {"workload": "w1", "seconds": 0.5, "round_seconds": [0.5], "model_gflop": 100.0, "fraction_of_peak": 0.5}
  theirs = [{"seconds": 2.0, "trl": "1.12.0", "torch": "2", "notes": "n", "generation_share": 0.1}]
  merged = run.with_peer(ours, theirs, peak=1e11)
  assert merged["speedup_vs_trl"] == 4.0 and merged["trl_fraction_of_peak"] == 0.5
  assert merged["trl_generation_share"] == 0.1
  assert "| w1 | 0.5 | 2 | 4.00x | 50% | 50% |" in limits.table([merged, merged])


def test_the_speedup_over_rounds_is_the_median_of_each_rounds_ratio():
  """A machine that slows down for one round slows both sides of that round's ratio."""
  ours = {"workload": "w3", "seconds": 0.5, "round_seconds": [0.4, 0.5, 1.0], "model_gflop": 1.0}
  theirs = [{"seconds": s, "generation_share": g} for s, g in ((0.8, 0.1), (1.0, 0.3), (2.0, 0.2))]
  merged = run.with_peer(ours, theirs, peak=1e11)
  assert merged["trl_seconds"] == 1.0 and merged["speedup_vs_trl"] == 2.0
  assert merged["trl_round_seconds"] == [0.8, 1.0, 2.0] and merged["trl_generation_share"] == 0.2
  assert run.rounded({"a": [0.123456], "b": {"c": 1.23456}}) == {"a": [0.1235], "b": {"c": 1.235}}


def test_a_workload_runs_once_compiled_and_its_profile_summarises(tmp_path):
  """W3 end to end through the command line: one JSON line, compiled once, a profile read back."""
  env = {**os.environ, "PYTHONPATH": ROOT}
  out = subprocess.run([sys.executable, "benchmarks/run.py", "--workload=w3", "--repeats=1",
                        f"--profile={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["workload"] == "w3" and result["compilations"] == 1
  assert result["seconds"] > 0 and 0 < result["fraction_of_peak"] < 1.5
  assert result["model_gflop"] == pytest.approx(flops.reward_step(TINY, 64, 48) / 1e9, rel=1e-3)
  summary = subprocess.run([sys.executable, "benchmarks/profile_summary.py", str(tmp_path / "w3"), "--top=5"],
                           cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
  assert "ms of ops per call" in summary and "by kind:" in summary


def test_the_rollout_workload_replays_a_length_file(tmp_path):
  """Each row stops at its own length; the static sampler's cache is rows x (prompt + budget),
  continuous batching's slots x (prompt + budget), and both draw the same tokens."""
  path = tmp_path / "lengths.txt"
  path.write_text("3\n9\n1\n5\n")
  lengths = workloads.read_lengths(str(path))
  workload = workloads.rollout_workload(lengths, "tiny", workloads.preset_model("tiny"), prompt_len=4, budget=12)
  tokens = jax.device_get(workload.step())
  assert tokens.shape == (4, 12) and workload.info["generated_tokens"] == 18 and workload.info["decode_steps"] == 16
  cfg = workload.model_cfg  # keys and values, float32, of every layer
  assert workload.info["peak_cache_bytes"] == 2 * cfg.n_layers * 4 * cfg.kv_heads * 16 * cfg.dim_per_head * 4
  slots = workloads.rollout_workload(lengths, "tiny", workloads.preset_model("tiny"), prompt_len=4, budget=12, slots=2)
  np.testing.assert_array_equal(jax.device_get(slots.step()), tokens)  # continuous batching: the same draws
  assert slots.info["batching"] == "continuous" and slots.info["peak_cache_bytes"] == workload.info["peak_cache_bytes"] // 2
  paged = workloads.rollout_workload(lengths, "tiny", workloads.preset_model("tiny"), prompt_len=4, budget=12, slots=2,
                                     paged=True, cache_blocks=2, block_size=8)
  np.testing.assert_array_equal(jax.device_get(paged.step()), tokens)  # 2 blocks of 8 and its scratch block
  assert paged.info["peak_cache_bytes"] == workload.info["peak_cache_bytes"] * 24 // 64
  # The roofline's bytes: 9 steps (the longest) of the weights, and every token's context once.
  kv = 2 * cfg.n_layers * cfg.kv_heads * cfg.dim_per_head * 4
  contexts = sum(n * 4 + n * (n - 1) // 2 for n in lengths)
  assert workload.info["floor_bytes"] == 9 * flops.matmul_weights(cfg) * 4 + kv * contexts
  assert slots.info["floor_bytes"] == workload.info["floor_bytes"]  # 2 slots: 18 tokens take 9 steps too
  path.write_text("3\n0\n")
  with pytest.raises(SystemExit, match="one integer >= 1 a line"):
    workloads.read_lengths(str(path))


def test_the_update_workload_replays_lengths_and_reports_both_sides():
  """The update half on rows of the replayed lengths (packed: tests/training/rl/test_packing.py
  checks it against padded); the JSON gives each side's seconds and the median of the rounds'
  speedups."""
  lengths = [3, 9, 1, 5]
  small = {"vocab_size": 64, "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64}
  packed = workloads.update_workload(lengths, "tiny", small, prompt_len=4, budget=12, packing=True, pack_rows=1)
  metrics = jax.device_get(packed.step())
  assert np.isfinite(metrics["policy_loss"]) and metrics["response_length"] == pytest.approx(4.5)
  assert packed.info["real_token_fraction"] == pytest.approx((18 + 16) / 64) and packed.info["pack_rows"] == 1
  result = run.sides("rl_update", (packed.info, [1.0, 2.0, 1.0]), (packed.info, [3.0, 2.0, 2.0]))
  assert result["packed"]["seconds"] == 1.0 and result["padded"]["seconds"] == 2.0 and result["speedup"] == 2.0
