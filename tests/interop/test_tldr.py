"""configs/pipeline.py:tldr end to end: a tiny random GPT-2 where docs/data.md's download puts
GPT-2, and a few records in each CarperAI dataset's exact format and file layout (hashed shard
names included), written by the test: SFT -> reward model -> PPO, each stage reading its files."""

import json
import os

import ml_collections
import numpy as np
import pytest

from configs import pipeline
from rlhf_jax import stages
from rlhf_jax.data import preferences
from tests.interop import tiny_hf

POSTS = ["my cat knocked the plant off the shelf again and I found soil all over the rug",
         "I started running in the mornings and now I sleep much better than before",
         "our landlord raised the rent twice this year and we are thinking of moving out"]


def tldr_rows(n: int, start: int = 0):
  """openai_summarize_tldr's columns: `prompt` (ending in TL;DR:) and `label` (the summary, its space first)."""
  for i in range(start, start + n):
    post = POSTS[i % len(POSTS)]
    yield {"prompt": f"SUBREDDIT: r/AskReddit\nTITLE: story {i}\nPOST: {post}\nTL;DR:", "label": f" {post[:24]}"}


def pair_rows(n: int, start: int = 0):
  """openai_summarize_comparisons' columns: the post without TL;DR, and two "TL;DR: ..." summaries."""
  for i in range(start, start + n):
    post = POSTS[i % len(POSTS)]
    yield {"prompt": f"SUBREDDIT: r/AskReddit\nTITLE: story {i}\nPOST: {post}",
           "chosen": f"TL;DR: {post[:30]}", "rejected": "TL;DR: the the the the"}


def write_split(datasets, pattern: str, split: str, rows) -> None:
  path = pattern.removeprefix("hf:").format(split=split).replace("*", "00000-of-00001-3f2e1d0c")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  datasets.Dataset.from_list(list(rows)).to_parquet(path)


def shrunk_tldr():
  cfg = pipeline.get_config("tldr")
  for stage in cfg.stages:
    cfg[stage].train.update(dict(num_steps=2, eval_every=2, checkpoint_every=2, log_every=1, eval_batches=1))
  cfg.sft.data.update(dict(batch_size=4, seq_len=64))
  cfg.reward.data.update(dict(batch_size=4, seq_len=64))
  cfg.rl.data.batch_size = 8
  cfg.rl.update(dict(max_prompt_len=48, eval_prompts=4))
  cfg.sft.sample.max_new_tokens = cfg.rl.sample.max_new_tokens = 8
  return cfg


def test_the_tldr_pipeline_runs_sft_reward_and_ppo_on_carperai_files_from_a_local_gpt2(tmp_path, monkeypatch):
  datasets = pytest.importorskip("datasets")
  pytest.importorskip("transformers")
  monkeypatch.chdir(tmp_path)  # the preset's paths are relative, as the downloads are
  gpt2 = pipeline.TLDR_GPT2.removeprefix("hf:")
  tiny_hf.hf_model("gpt2").save_pretrained(gpt2)
  tiny_hf.bpe_tokenizer(gpt2)
  write_split(datasets, pipeline.TLDR_SFT, "train", tldr_rows(24))
  write_split(datasets, pipeline.TLDR_SFT, "valid", tldr_rows(8, 100))
  write_split(datasets, pipeline.TLDR_PAIRS, "train", pair_rows(24))
  write_split(datasets, pipeline.TLDR_PAIRS, "test", pair_rows(8, 100))
  cfg = shrunk_tldr()
  cfg.rl.eval.judge_model = pipeline.TLDR_GPT2  # a (random) judge: the win rate's mechanics, not its value
  # The comparisons' prompt takes "\n" and then the TL;DR: the reward model reads the text the policy's queries end in.
  record = preferences.sources.Record("pairs:1", next(pair_rows(1)))
  prompt, chosen, _ = preferences.pair_of(record, cfg.reward.preference)
  assert prompt + chosen == next(tldr_rows(1))["prompt"] + " " + POSTS[0][:30]
  summary = stages.run(cfg, "runs/tldr")
  assert set(summary) >= {"sft", "reward", "rl"}
  rl = json.load(open("runs/tldr/rl/summary.json"))
  for key in ("eval/proxy_reward", "eval/kl", "eval/response_length"):
    assert np.isfinite(rl[key]), key
  assert 0 < rl["eval/win_rate"] < 1 and 0 < rl["eval/ref_win_rate"] < 1
  assert json.load(open("runs/tldr/sft/config.json"))["init_from"] == pipeline.TLDR_GPT2
  plan = json.load(open("runs/tldr/rl/plan.json"))
  assert plan["critic"] == "reward" and plan["rl"]["epochs"]["value"] == 4 and plan["kl_coef"] == 0.05
  samples = [json.loads(line) for line in open("runs/tldr/rl/samples/step_000002.jsonl")]
  assert samples[0]["prompt"].endswith("TL;DR:") and "story 100" in samples[0]["prompt"]  # the valid file's


def test_the_judge_asks_both_orders_so_identical_responses_tie_and_a_bad_path_is_one_line(tmp_path):
  pytest.importorskip("transformers")
  from rlhf_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  from rlhf_jax import pairwise_judge  # pylint: disable=g-import-not-at-top
  from rlhf_jax.pairwise_judge import PairwiseJudge  # pylint: disable=g-import-not-at-top
  tiny_hf.hf_model("gpt2").save_pretrained(tmp_path / "judge")
  tiny_hf.bpe_tokenizer(str(tmp_path / "judge"))
  judge = PairwiseJudge(f"hf:{tmp_path / 'judge'}", batch=2)
  prompts, ours = ["a post about a cat", "a post about rent", "a run"], ["the cat", "rent is up", "I run"]
  np.testing.assert_allclose(judge.win_rate(prompts, ours, ours), 0.5, atol=1e-6)
  theirs = ["a dog", "moving out", "sleep"]
  first = judge.first_preferred(prompts, ours, theirs)
  np.testing.assert_allclose(judge.win_rate(prompts, ours, theirs),
                             (first + 1 - judge.first_preferred(prompts, theirs, ours)) / 2, atol=1e-6)
  with pytest.raises(UserError, match="eval.judge_model='models/judge': expected hf:DIR"):
    PairwiseJudge("models/judge")
  eval_cfg = ml_collections.ConfigDict(dict(judge_model=f"hf:{tmp_path / 'judge'}", judge_reference_field="",
                                            judge_template=""))
  against_policy = pairwise_judge.from_config(eval_cfg, {"label": theirs})  # "": the reference policy's responses
  np.testing.assert_allclose(against_policy(prompts, ours, ours), 0.5, atol=1e-6)
  eval_cfg.judge_reference_field = "summary"
  with pytest.raises(UserError, match="judge_reference_field='summary': the held-out prompts have no such column"):
    pairwise_judge.from_config(eval_cfg, {"label": theirs})
