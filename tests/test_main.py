"""End to end through the entry point: training, resuming, the pipeline, and bad input."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from rlhf_jax import stages
from rlhf_jax.data.tokenizers import load_tokenizer
from rlhf_jax.errors import UserError
from rlhf_jax.metrics_log import MetricsLog
from tests.conftest import run_until_crash

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_metrics(workdir):
  """metrics.jsonl's rows, less compute/seconds and the phase times (time/*): wall-clock time
  differs between any two runs."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  for row in rows:
    assert "compute/flops" in row and row.pop("compute/seconds") >= 0, row  # every row carries its compute
    for key in [key for key in row if key.startswith("time/")]:
      row.pop(key)
  return rows


def test_pretraining_loss_falls_on_the_embedded_corpus(tiny_pretrain, tmp_path):
  tiny_pretrain.train.update(dict(num_steps=60, eval_every=60, checkpoint_every=60))
  tiny_pretrain.optim.lr = 3e-3
  summary = stages.run(tiny_pretrain, str(tmp_path))
  train = [m for m in read_metrics(tmp_path) if "loss" in m]
  uniform = math.log(load_tokenizer(str(tmp_path / "tokenizer")).vocab_size)
  assert train[0]["loss"] > 0.8 * uniform  # a random model is near-uniform
  assert summary["eval/loss"] < 0.6 * uniform and train[-1]["loss"] < 0.6 * train[0]["loss"]
  for name in ("config.json", "model.json", "summary.json", "tokenizer/tokenizer.json", "samples/step_000060.txt"):
    assert os.path.exists(tmp_path / name), name
  assert os.listdir(tmp_path / "tb") and os.listdir(tmp_path / "checkpoints")


def test_finished_run_is_not_redone(tiny_pretrain, tiny_upstream, tmp_path, monkeypatch):
  finished = os.path.join(os.path.dirname(tiny_upstream["init_from"]), "pretrain")
  shutil.copytree(finished, tmp_path / "run")  # the shared upstream's pretraining, as this config makes it
  monkeypatch.setattr(MetricsLog, "write", lambda *a: pytest.fail("a finished run trained again"))
  assert stages.run(tiny_pretrain, str(tmp_path / "run")) == json.load(open(tmp_path / "run" / "summary.json"))


def test_sft_ran_its_upstream_pretraining_and_started_from_it(tiny_upstream):
  """The shared upstream's SFT stage (its own upstream pretraining run first, under the
  reward run's upstream/); that it started from pretraining's weights is tests/training/test_setup.py's."""
  sft = tiny_upstream["init_from"]
  pretrain = os.path.join(os.path.dirname(sft), "pretrain")
  assert json.load(open(os.path.join(sft, "config.json")))["init_from"] == pretrain
  summary = json.load(open(os.path.join(sft, "summary.json")))
  uniform = math.log(load_tokenizer(os.path.join(sft, "tokenizer")).vocab_size)
  assert summary["step"] == 10 and summary["eval/loss"] < 0.8 * uniform
  samples = open(os.path.join(sft, "samples", "step_000010.txt")).read().splitlines()
  assert len(samples) == 4 and all(" -> " in line for line in samples)


def test_checkpoint_that_does_not_fit_the_model_is_a_clear_error(tiny_pretrain, tmp_path, monkeypatch):
  run_until_crash(lambda: stages.run(tiny_pretrain.copy_and_resolve_references(), str(tmp_path)), monkeypatch,
                  step=15)
  files = {name: open(tmp_path / name).read() for name in ("config.json", "model.json")}
  tiny_pretrain.model.d_model = 32
  with pytest.raises(UserError, match=r"does not fit the model: embed/embedding has shape"):
    stages.run(tiny_pretrain, str(tmp_path))
  assert os.path.isdir(tmp_path / "checkpoints" / "10")  # the earlier work is still there, unchanged
  assert files == {name: open(tmp_path / name).read() for name in files}


def run_main(*args, cwd=ROOT):
  env = dict(os.environ, PYTHONPATH=ROOT)  # the package from any directory, installed or not
  return subprocess.run([sys.executable, "-m", "rlhf_jax.main", *args], cwd=cwd, capture_output=True,
                        text=True, timeout=300, env=env)


BAD_FILES = {"bad.jsonl": '{"text": "fine"}\n{"text": "cut short\n', "empty.jsonl": "",
             "latin1.jsonl": b'{"text": "fine"}\n{"text": "caf\xe9"}\n'}


@pytest.mark.parametrize("config, override, message", [
    ("pretrain", "--config.optim.lrr=1", 'unknown config field in the --config.* overrides: Did you mean "lr"'),
    ("pretrain", "--config.data.source=jsonl:/no/such/file.jsonl", "data file not found: /no/such/file.jsonl"),
    ("pretrain", "--config.data.source=jsonl:{dir}/bad.jsonl", "bad.jsonl:2: malformed JSON"),
    ("pretrain", "--config.data.source=jsonl:{dir}/empty.jsonl", "empty.jsonl' has no documents"),
    ("pretrain", "--config.data.source=jsonl:{dir}/latin1.jsonl", "latin1.jsonl:2: not UTF-8 (byte 0xe9"),
    ("pretrain", "--config.model.vocab_size=128", "tokenizer vocabulary (259) is larger than model.vocab_size (128)"),
    ("pretrain", "--config.mesh.data=3", "does not divide the 1 available devices"),
    ("pretrain", "--config.memory.device_gb=0.001", "the plan needs 1"),  # ~14 MiB of a 1 MiB device
    ("pretrain", "--config.train.on_nonfinite=ignore", "train.on_nonfinite='ignore': choose one of"),
    ("ppo", "--config.algo=a2c", "algo='a2c'"),
    ("rl", "--config.rl.policy_loss=trpo", "rl.policy_loss='trpo': choose one of clip, dual_clip"),
    ("rl", "--config.rl.epochs=0", "rl.epochs=0 must be >= 1"),  # 0 is a value, not "the preset's"
    ("pretrain", "--config.data.batch_size=0", "data.batch_size=0 must be >= 1"),
])
def test_bad_input_is_one_clear_line(tmp_path, config, override, message):
  for name, text in BAD_FILES.items():
    (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
  workdir = tmp_path / "run"
  result = run_main(f"--config=configs/{config}.py:tiny", f"--workdir={workdir}", override.format(dir=tmp_path),
                    "--config.tokenizer.kind=byte")
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert not os.path.exists(workdir / "config.json")  # nothing written for a run that never started


def test_the_pipeline_stage_ppo_was_says_what_replaced_it(tmp_path):
  result = run_main("--config=configs/pipeline.py:tiny", f"--workdir={tmp_path}", "--config.ppo.algo=grpo")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "error: a pipeline's ppo stage is now its rl stage: write --config.rl.FIELD" in result.stderr


def test_a_config_file_that_raises_is_named_with_its_line(tmp_path):
  (tmp_path / "broken.py").write_text("from configs import pretrain\n\ndef get_config(preset):\n"
                                      "  c = pretrain.get_config(preset)\n  del c.no_such_field\n  return c\n")
  result = run_main(f"--config={tmp_path / 'broken.py'}:tiny", f"--workdir={tmp_path / 'run'}", "--config.seed=1")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert f"error: cannot load --config: {tmp_path / 'broken.py'}:5: AttributeError: no_such_field" in result.stderr


def test_missing_config_file_is_one_clear_line(tmp_path):
  result = run_main("--config=configs/no_such_stage.py:tiny", f"--workdir={tmp_path}")
  assert result.returncode == 2 and "No such file or directory" in result.stderr
  assert "Traceback" not in result.stderr


def test_sentencepiece_tokenizer_is_trained_and_saved_with_the_run(tiny_pretrain, tmp_path):
  tiny_pretrain.tokenizer.update(dict(kind="sentencepiece", vocab_size=400, train_docs=400))
  tiny_pretrain.train.update(dict(num_steps=6, eval_every=6, checkpoint_every=6))
  stages.run(tiny_pretrain, str(tmp_path))
  assert os.path.exists(tmp_path / "tokenizer" / "tokenizer.model")
  model = json.load(open(tmp_path / "model.json"))
  assert model["vocab_size"] == 512  # 400 pieces, padded to a multiple of 128
