"""The GSM8K commands of docs/data.md (configs/gsm8k.py) end to end: a tiny random Qwen2 checkpoint
with a chat template, and GSM8K-format parquet files the test writes where docs/data.md's
download puts them."""

import json
import os

import pytest

from configs import gsm8k
from rlhf_jax import stages
from tests.data.test_chat_template import MARKERS, QWEN
from tests.interop import tiny_hf
from tests.test_main import ROOT, run_main

TINY = ["--config.train.num_steps=2", "--config.train.eval_every=2", "--config.train.checkpoint_every=2",
        "--config.data.batch_size=8", "--config.max_prompt_len=64", "--config.sample.max_new_tokens=16",
        "--config.eval_prompts=4", "--config.eval.k=2"]


def write_gsm8k(root, datasets):
  """GSM8K's layout and columns: `question`, and `answer` a worked solution ending in #### N."""
  rows = [{"question": f"Tom has {i} apples and buys 2. How many?", "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"}
          for i in range(24)]
  for split, part in (("train", rows[:16]), ("test", rows[16:])):
    path = os.path.join(root, gsm8k.TRAIN.removeprefix("hf:") if split == "train" else gsm8k.TEST.removeprefix("hf:"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    datasets.Dataset.from_list(part).to_parquet(path)
  return rows


def test_grpo_then_ppo_on_gsm8k_from_a_qwen2_checkpoint(tmp_path):
  datasets = pytest.importorskip("datasets")
  pytest.importorskip("transformers")
  qwen = tmp_path / "models" / "qwen2"
  tiny_hf.hf_model("qwen2").save_pretrained(qwen)
  tiny_hf.bpe_tokenizer(str(qwen), MARKERS, chat_template=QWEN)
  rows = write_gsm8k(str(tmp_path), datasets)
  result = run_main(f"--config={ROOT}/configs/gsm8k.py:tiny", "--workdir=runs/gsm8k_grpo",
                    "--config.init_from=hf:models/qwen2", *TINY, cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  run = tmp_path / "runs" / "gsm8k_grpo"
  summary = json.load(open(run / "summary.json"))
  for key in ("eval/accuracy", "eval/greedy_accuracy", "eval/pass@2", "eval/maj@2", "eval/ref_mean@2"):
    assert 0 <= summary[key] <= 1, key
  samples = [json.loads(line) for line in open(run / "samples" / "step_000002.jsonl")]
  assert [s["columns"]["answer"] for s in samples] == [r["answer"] for r in rows[16:20]]  # the test file's
  assert samples[0]["prompt"].startswith("<|im_start|>system") and rows[16]["question"] in samples[0]["prompt"]
  assert "reward/gsm8k" in samples[0] and not os.path.exists(run / "upstream")  # no reward model, no upstream
  cfg = gsm8k.get_config("tiny")  # --config.algo=ppo: a critic from the checkpoint, the same rollouts
  cfg.update(dict(algo="ppo", init_from=f"hf:{qwen}", max_prompt_len=64, eval_prompts=4))
  at = lambda source: f"hf:{tmp_path}/{source.removeprefix('hf:')}"
  cfg.data.update(dict(batch_size=8, source=at(gsm8k.TRAIN), eval_source=at(gsm8k.TEST)))
  cfg.train.update(dict(num_steps=1, eval_every=1, checkpoint_every=1, log_every=1))
  cfg.sample.max_new_tokens = 16
  summary = stages.run(cfg, str(tmp_path / "runs" / "gsm8k_ppo"))
  logged = [json.loads(line) for line in open(tmp_path / "runs" / "gsm8k_ppo" / "metrics.jsonl")]
  assert "eval/greedy_accuracy" in summary and any("value_loss" in row for row in logged)
