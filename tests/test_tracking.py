"""Weights & Biases logging, in W&B's offline mode (no account, no network)."""

import glob
import hashlib
import os

import pytest

from rlhf_jax import stages


def test_a_run_logs_its_rows_to_wandb_offline_named_by_its_directory(tiny_pretrain, tmp_path):
  pytest.importorskip("wandb")
  tiny_pretrain.train.update(dict(num_steps=4, log_every=2, eval_every=4, checkpoint_every=4))
  tiny_pretrain.log.update(dict(wandb_project="rlhf_jax_tests", wandb_mode="offline"))
  workdir = tmp_path / "my_sweep" / "run_a"
  stages.run(tiny_pretrain, str(workdir))
  runs = glob.glob(str(workdir / "wandb" / "offline-run-*"))
  assert len(runs) == 1 and runs[0].endswith(hashlib.sha1(str(workdir).encode()).hexdigest()[:16])  # id from the path
  record = open(glob.glob(os.path.join(runs[0], "*.wandb"))[0], "rb").read()
  for text in (b"loss", b"eval/loss", b"compute/flops", b"run_a", b"my_sweep", b"rlhf_jax_tests"):
    assert text in record, text  # the rows, the run's name and group, its project


def test_no_project_no_wandb(tiny_pretrain, tmp_path):
  tiny_pretrain.train.update(dict(num_steps=2, log_every=2, eval_every=2, checkpoint_every=2))
  stages.run(tiny_pretrain, str(tmp_path))
  assert not os.path.exists(tmp_path / "wandb")
