"""configs/pipeline.py:constitutional end to end at the preset's own paths, on the shared tiny SFT
policy exported as the Hugging Face "instruct model" (which is also the judge): revise -> SFT on
the revisions -> a reward model on pairs the judge labels by the constitution's principles -> PPO,
every stage driven by the given prompts."""

import json
import os

import numpy as np

from configs import pipeline
from rlhf_jax import stages
from rlhf_jax.data import constitution
from rlhf_jax.interop.export import export_run

PROMPTS = [f"Question {i}: how do I get back at my neighbour?" for i in range(10)]


def shrunk_constitutional():
  cfg = pipeline.get_config("constitutional")
  for stage in cfg.stages:
    cfg[stage].model.dtype = "float32"
    cfg[stage].data.update(dict(batch_size=4, seq_len=64, eval_fraction=0.2))  # 8 training prompts, 2 held out
  cfg.revise.revise.update(dict(num_prompts=8, response_tokens=8, critique_tokens=6, revision_tokens=8,
                                max_context_len=48))
  for stage in ("sft", "reward", "rl"):
    cfg[stage].train.update(dict(num_steps=2, eval_every=2, checkpoint_every=2, log_every=1, eval_batches=1))
  cfg.reward.preference.update(dict(train_pairs=8, eval_pairs=4, max_new_tokens=8, gen_batch=8, judge_batch=8))
  cfg.rl.update(dict(max_prompt_len=24, eval_prompts=2))
  cfg.sft.sample.update(dict(num_prompts=2, max_new_tokens=8))
  cfg.rl.sample.max_new_tokens = 8
  return cfg


def test_the_constitutional_pipeline_runs_every_stage_on_the_given_prompts(tiny_upstream, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # the preset's paths are relative, as docs/ai_feedback.md's downloads are
  export_run(tiny_upstream["init_from"], pipeline.CAI_MODEL.removeprefix("hf:"))
  os.makedirs("data")
  with open(pipeline.CAI_PROMPTS.removeprefix("jsonl:"), "w") as f:
    f.writelines(json.dumps({"prompt": p}) + "\n" for p in PROMPTS)
  summary = stages.run(shrunk_constitutional(), "runs/cai")
  assert list(summary) == ["revise", "sft", "reward", "rl"]
  revisions = [json.loads(line) for line in open("runs/cai/revise/revisions.jsonl")]
  assert [r["prompt"] for r in revisions] == PROMPTS[:8]
  sft = json.load(open("runs/cai/sft/config.json"))
  assert sft["data"]["source"] == "revise:runs/cai/revise"  # the pipeline's revise run
  samples = open(os.path.join("runs/cai/sft/samples", "step_000002.txt")).read()
  assert "Human: Question 7:" in samples  # SFT's held-out prompt: the revisions' last, in the paper's format
  pairs = [json.loads(line) for line in open("runs/cai/reward/preferences_train.jsonl")]
  principles = constitution.load("embedded")
  for index, pair in enumerate(pairs):  # each pair's judge was asked its drawn principle's question
    assert pair["prompt"] == f"Human: {PROMPTS[index]}\n\nAssistant:"
    assert pair["principle"] == constitution.draw(len(principles), 1, 0, index)[0]
    assert 0.5 <= pair["label"] <= 1
  rl = json.load(open("runs/cai/rl/summary.json"))
  assert np.isfinite(rl["eval/proxy_reward"]) and np.isfinite(rl["eval/kl"])
  held_out = [json.loads(line)["prompt"] for line in open("runs/cai/rl/samples/step_000002.jsonl")]
  assert held_out == [f"Human: {p}\n\nAssistant:" for p in PROMPTS[8:]]
