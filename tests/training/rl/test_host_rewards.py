"""Host reward functions in the RL stage: each completion meets its own prompt's columns through
k samples and the shuffled prompt order; a function in a file drives RL with no reward model;
one that raises stops the run after the last finished iteration's checkpoint."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import rewards, rl_plan, sharding, stages
from rlhf_jax.data.prompts import Prompts
from rlhf_jax.data.tokenizers import ByteTokenizer
from rlhf_jax.errors import UserError
from rlhf_jax.models.sampling import SampleOutput
from rlhf_jax.training.rl.host_rewards import HostScorer
from rlhf_jax.training.rl.rl_steps import Sampled


def test_each_completion_gets_its_own_prompt_and_columns_through_k_samples_and_the_shuffle():
  tokenizer, k, seen = ByteTokenizer(), 3, {}
  texts = [f"prompt {i}" for i in range(5)]
  prompts = Prompts(texts, np.zeros((5, 2), np.int32), np.ones((5, 2), np.int32),
                    columns={"answer": [str(10 * i) for i in range(5)]})
  ids = np.array([3, 0, 4])  # this step's prompts, as prompt_batch shuffles them

  def echo(prompts, completions, completion_ids, answer, **unused):  # the completion writes its prompt's answer
    seen.update(prompts=prompts, answer=answer)
    return [float(c == a) for c, a in zip(completions, answer)]
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  score = HostScorer([rewards.HostReward("echo", echo, 2.0)], False, prompts, tokenizer, k, mesh)
  rows = [i for i in ids for _ in range(k)]
  response = np.full((len(rows), 4), tokenizer.pad_id, np.int32)
  for r, i in enumerate(rows):
    answer = tokenizer.encode(str(10 * i)) if r % k else tokenizer.encode("no")  # the first sample of each is wrong
    response[r, :len(answer)] = answer
  mask = (response != tokenizer.pad_id).astype(np.int32)
  out = SampleOutput(jnp.asarray(response), jnp.zeros(response.shape), jnp.asarray(mask))
  host = score(Sampled(None, None, out, None, None), ids)
  assert seen["prompts"] == [texts[i] for i in rows] and seen["answer"] == [str(10 * i) for i in rows]
  np.testing.assert_array_equal(np.asarray(host.total), [0, 2, 2] * 3)
  np.testing.assert_array_equal(np.asarray(host.components)[:, 0], [0, 1, 1] * 3)
  assert host.greedy is None


BREVITY = """
CALLS = []

def brevity(prompts, completions, completion_ids, **kwargs):
  CALLS.append(len(completions))
  return [-len(ids) / 16 for ids in completion_ids]

def flaky(prompts, completions, **kwargs):
  CALLS.append(len(completions))
  if len(CALLS) == 3:
    raise RuntimeError("the checker lost its connection")
  return [0.0] * len(completions)

def sometimes(prompts, completions, completion_ids, **kwargs):  # TRL's None: does not apply
  return [None if i % 3 == 0 else -len(ids) / 16 for i, ids in enumerate(completion_ids)]

def broken(prompts, completions, **kwargs):
  CALLS.append(len(completions))
  return [float("nan") if len(CALLS) == 2 and i == 1 else 0.0 for i in range(len(completions))]
"""


def host_config(tiny_ppo, tiny_upstream, tmp_path, fn: str):
  path = tmp_path / "my_rewards.py"
  path.write_text(BREVITY)
  cfg = tiny_ppo.copy_and_resolve_references()
  cfg.init_from = tiny_upstream["init_from"]  # no reward_from: no reward model anywhere
  cfg.reward.fns = (f"{path}:{fn}",)
  return cfg


def test_a_function_in_a_file_drives_ppo_with_no_reward_model_and_its_critic_from_sft(tiny_ppo, tiny_upstream,
                                                                                      tmp_path):
  cfg = host_config(tiny_ppo, tiny_upstream, tmp_path, "brevity")
  cfg.train.update(dict(num_steps=8, eval_every=8, checkpoint_every=8, log_every=1))
  cfg.optim.update(dict(lr=1e-3, warmup_steps=0))
  cfg.data.batch_size = 16
  cfg.rl.penalise_no_eos, cfg.kl_coef = False, 0.0  # either alone would teach it to end sooner
  plan = rl_plan.resolve(cfg)
  assert plan.critic == "sft" and plan.unused_upstream == {"reward"} and plan.driver == "host"
  summary = stages.run(cfg, str(tmp_path / "run"))
  # It learnt to write less: measured 10.0 tokens against the SFT policy's 14.6 (brevity -0.63 vs
  # -0.91); with the host's scores left out of the update, 15.8.
  assert summary["eval/response_length"] < 0.85 * summary["eval/ref_response_length"]
  assert summary["eval/reward/brevity"] > summary["eval/ref_reward/brevity"] + 0.15
  assert summary["eval/proxy_reward"] == pytest.approx(summary["eval/reward/brevity"])
  train = [row for row in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if "reward/brevity" in row]
  assert len(train) == 8 and "reward/model" not in train[-1] and "explained_variance" in train[-1]
  assert "value" in os.listdir(tmp_path / "run" / "checkpoints" / "8") and not os.path.exists(tmp_path / "upstream")


def test_grpo_learns_from_the_pipelines_own_sft_run_and_says_how_many_groups_taught_it(tiny_ppo, tiny_upstream,
                                                                                        tmp_path):
  # Issue 46: nothing checked that a critic-free RL stage moves the pipeline's own SFT policy.
  cfg = host_config(tiny_ppo, tiny_upstream, tmp_path, "brevity")
  cfg.algo = "grpo"
  cfg.train.update(dict(num_steps=8, eval_every=8, checkpoint_every=8, log_every=1))
  cfg.optim.update(dict(lr=1e-3, warmup_steps=0))
  cfg.data.batch_size = 16
  cfg.rl.penalise_no_eos, cfg.kl_coef = False, 0.0
  summary = stages.run(cfg, str(tmp_path / "run"))
  assert summary["eval/reward/brevity"] > summary["eval/ref_reward/brevity"] + 0.15
  train = [row for row in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if "reward/brevity" in row]
  # Groups of 4 whose lengths all agree teach nothing; most groups here differ.
  assert all(0 <= row["uninformative_fraction"] < 0.5 for row in train)
  assert float(np.mean([row["kl"] for row in train[-3:]])) > 0


def test_grpo_learns_from_a_token_reward_inside_the_compiled_iteration(tiny_ppo, tiny_upstream, tmp_path):
  """`length` (algorithms/token_rewards.py) needs no host: the fused iteration scores it."""
  cfg = host_config(tiny_ppo, tiny_upstream, tmp_path, "brevity")
  cfg.algo, cfg.reward.fns, cfg.reward.format_text = "grpo", ("length", "format"), "the"
  cfg.train.update(dict(num_steps=8, eval_every=8, checkpoint_every=8, log_every=1))
  cfg.optim.update(dict(lr=1e-3, warmup_steps=0))
  cfg.data.batch_size = 16
  cfg.rl.penalise_no_eos, cfg.kl_coef = False, 0.0
  assert rl_plan.resolve(cfg).driver == "fused"
  summary = stages.run(cfg, str(tmp_path / "run"))
  assert summary["eval/response_length"] < 0.85 * summary["eval/ref_response_length"]
  assert summary["eval/proxy_reward"] == pytest.approx(summary["eval/reward/length"] + summary["eval/reward/format"])
  train = [row for row in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if "reward/length" in row]
  assert len(train) == 8 and all(0 <= row["reward/format"] <= 1 for row in train)
  assert train[0]["reward/length"] == pytest.approx(-train[0]["response_length"] / cfg.sample.max_new_tokens)
  cfg.reward.format_text = ""
  with pytest.raises(UserError, match="token reward `format`: set reward.format_text"):
    stages.run(cfg, str(tmp_path / "unset"))


def test_vmapped_seeds_with_a_host_reward_score_each_seeds_own_rows(tiny_ppo, tiny_upstream, tmp_path):
  """Seed 0 of the vmapped program is the single run (the seeds share its prompts), and each
  seed's host scores are of its own responses (brevity is -tokens / 16 of each)."""
  cfg = host_config(tiny_ppo, tiny_upstream, tmp_path, "brevity")
  cfg.algo = "grpo"
  cfg.train.update(dict(num_steps=2, eval_every=2, checkpoint_every=2, log_every=1))
  cfg.data.batch_size = 16
  stages.run(cfg.copy_and_resolve_references(), str(tmp_path / "single"))
  cfg.vmap_seeds = 2
  summary = stages.run(cfg, str(tmp_path / "vmapped"))
  rows = lambda d: [json.loads(line) for line in open(d / "metrics.jsonl") if "reward/brevity" in line]
  seeds = [rows(tmp_path / "vmapped" / f"seed_{seed}") for seed in (0, 1)]
  single = rows(tmp_path / "single")
  assert len(seeds[0]) == len(single) == 3  # 2 iterations and the evaluation
  for mine, theirs in zip(seeds[0], single):
    for key in ("reward/brevity", "score", "kl", "eval/reward/brevity"):
      if key in theirs:
        assert mine[key] == pytest.approx(theirs[key], rel=1e-3, abs=1e-4), key
  for seed in seeds:
    assert all(row["reward/brevity"] == pytest.approx(-row["response_length"] / 16) for row in seed[:2])
  assert seeds[1][0]["reward/brevity"] != seeds[0][0]["reward/brevity"] and summary["seeds"] == [0, 1]


def test_a_lone_functions_none_is_no_reward_and_its_nan_stops_the_run_naming_it(tiny_ppo, tiny_upstream, tmp_path):
  # Issue 39: a lone function returning None for some rows stopped the run with "non-finite
  # grads ... Lower optim.lr", naming neither; its NaN was dropped as if it were None.
  cfg = host_config(tiny_ppo, tiny_upstream, tmp_path, "sometimes")
  cfg.algo = "rloo"
  cfg.train.update(dict(num_steps=2, eval_every=2, checkpoint_every=2, log_every=1))
  summary = stages.run(cfg.copy_and_resolve_references(), str(tmp_path / "none"))
  train = [row for row in map(json.loads, open(tmp_path / "none" / "metrics.jsonl")) if "reward/sometimes" in row]
  assert summary["step"] == 2 and all(row["skipped_updates"] == 0 and row["nonfinite_rewards"] == 0 for row in train)
  assert all(-1 <= row["reward/sometimes"] < 0 for row in train)  # the mean of the rows it scored
  cfg.reward.fns = (f"{tmp_path / 'my_rewards.py'}:broken",)
  with pytest.raises(UserError, match=r"step 2: reward function broken returned nan for completion 1 \(1 "
                                      r"non-finite of \d+\): return a number, or None .* \(checkpoint of step 1"):
    stages.run(cfg, str(tmp_path / "nan"))


def records_config(tiny_ppo, tiny_upstream, tmp_path, host: str):
  """GRPO on the arithmetic records, scored by the reward model plus a host component."""
  (tmp_path / "my_rewards.py").write_text(BREVITY)
  cfg = tiny_ppo.copy_and_resolve_references()
  cfg.update(dict(judge="", algo="grpo", eval_prompts=4, **tiny_upstream))
  cfg.data.update(dict(source="embedded:arithmetic", prompt_template="{question}", eval_docs=16))
  cfg.reward.fns = ("model", host if host in rewards.BUILTINS else f"{tmp_path / 'my_rewards.py'}:{host}")
  return cfg


def test_a_function_that_raises_stops_the_run_after_the_last_iterations_checkpoint(tiny_ppo, tiny_upstream,
                                                                                   tmp_path):
  cfg = records_config(tiny_ppo, tiny_upstream, tmp_path, "flaky")
  cfg.train.update(dict(num_steps=4, eval_every=4, checkpoint_every=4))
  with pytest.raises(UserError, match=r"step 3: reward function flaky raised RuntimeError: the checker lost its "
                                      r"connection \(checkpoint of step 2 in "):
    stages.run(cfg, str(tmp_path / "run"))
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2"]


def test_rl_on_prompt_records_reports_accuracy_and_writes_every_score_and_column(tiny_ppo, tiny_upstream,
                                                                                  tmp_path):
  cfg = records_config(tiny_ppo, tiny_upstream, tmp_path, "exact_match")
  cfg.train.update(dict(num_steps=2, eval_every=2, checkpoint_every=2))
  cfg.eval.k = 2
  summary = stages.run(cfg, str(tmp_path / "run"))
  assert 0 <= summary["eval/accuracy"] <= 1 and summary["eval/accuracy"] == summary["eval/reward/exact_match"]
  assert summary["eval/proxy_reward"] == pytest.approx(summary["eval/reward/model"] + summary["eval/accuracy"])
  assert "eval/gold_reward" not in summary and "eval/ref_accuracy" in summary
  train = [row for row in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if "reward/model" in row]
  assert "reward/exact_match" in train[-1]
  rows = [json.loads(line) for line in open(tmp_path / "run" / "samples" / "step_000002.jsonl")]
  assert len(rows) == 4 and rows[0]["prompt"].startswith("What is ")
  verifiable = {f"{who}{key}" for who in ("", "ref_") for key in ("greedy_accuracy", "pass@2", "mean@2", "maj@2")}
  assert set(rows[0]) == {"prompt", "response", "ref_response", "reward/exact_match", "ref_reward/exact_match",
                          "reward/model", "ref_reward/model", "accuracy", "ref_accuracy", "proxy_reward",
                          "ref_proxy_reward", "columns"} | verifiable
  assert {f"eval/{key}" for key in verifiable} <= set(summary)
  for who in ("", "ref_"):
    assert all(r[f"{who}pass@2"] >= r[f"{who}mean@2"] >= 0 and r[f"{who}pass@2"] >= r[f"{who}maj@2"] for r in rows)
  assert set(rows[0]["columns"]) == {"answer", "question", "response"}  # the record's worked solution too
  for row in rows:
    right = rewards.last_integer(row["response"]) == int(row["columns"]["answer"])
    assert row["reward/exact_match"] == float(right) and row["prompt"] == row["columns"]["question"]
