"""Multi-host: settings from config or environment, and a real two-process `jax.distributed`
PPO run on localhost (launch/local.sh with PROCESSES=2) that checkpoints, restores, and
matches one process holding the same two devices."""

import os
import shutil
import subprocess

import pytest

from configs import common
from rlhf_jax import distributed
from rlhf_jax.errors import UserError
from tests.test_main import ROOT, read_metrics


def settings(environ=None, **fields):
  cfg = common.distributed_config()
  cfg.update(fields)
  return distributed.settings(cfg, environ or {})


def test_single_process_unless_told_otherwise():
  assert settings() is None
  assert settings(None) is None and distributed.settings(None) is None


def test_coordinator_from_config_or_environment():
  assert settings(coordinator="h:1", num_processes=2, process_id=1) == dict(
      coordinator_address="h:1", num_processes=2, process_id=1)
  environ = {"JAX_COORDINATOR_ADDRESS": "h:2", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  assert settings(environ) == dict(coordinator_address="h:2", num_processes=4, process_id=3)
  assert settings({"RLHF_JAX_DISTRIBUTED": "auto"}) == {} and settings(auto=True) == {}
  with pytest.raises(UserError, match="num_processes=0 and process_id=-1"):
    settings(coordinator="h:1")


CONFIG = """
from tests.conftest import make_tiny_ppo

def get_config(arg=None):
  config = make_tiny_ppo()
  config.init_from, config.reward_from = {init_from!r}, {reward_from!r}
  config.train.update(dict(eval_every=2, checkpoint_every=2))
  return config
"""


def launch(config_file, workdir, num_steps: int, **env):
  command = ["bash", os.path.join(ROOT, "launch", "local.sh"), f"{config_file}:tiny", str(workdir),
             f"--config.train.num_steps={num_steps}"]
  result = subprocess.run(command, cwd=ROOT, env=dict(os.environ, **env), capture_output=True, text=True,
                          timeout=600)
  logs = "".join(open(os.path.join(workdir, name)).read() for name in sorted(os.listdir(workdir))
                 if name.startswith("log"))
  assert result.returncode == 0, logs[-3000:] + result.stderr[-3000:]
  return logs


def same_metrics(ours: list, theirs: list, tolerance: float) -> None:
  ours, theirs = {m["step"]: m for m in ours}, {m["step"]: m for m in theirs}
  assert sorted(ours) == sorted(theirs) == [1, 2, 3, 4]
  for step, metrics in theirs.items():
    for key, value in metrics.items():
      if isinstance(value, float) and "seconds" not in key:
        assert abs(ours[step][key] - value) <= tolerance * max(1.0, abs(value)), (step, key, ours[step][key], value)


def test_two_processes_train_checkpoint_restore_and_match_one(tmp_path, tiny_upstream):
  config_file = tmp_path / "ppo_two_hosts.py"
  config_file.write_text(CONFIG.format(**tiny_upstream))
  two, one = tmp_path / "two_processes", tmp_path / "one_process"
  logs = launch(config_file, two, 4, PROCESSES="2", DEVICES="1")
  assert "process 1 of 2: 1 local devices, 2 in all" in logs
  uninterrupted = read_metrics(two)
  # As if killed after the checkpoint at step 2: the same command restores it and goes on.
  shutil.rmtree(two / "checkpoints" / "4")
  os.remove(two / "summary.json")
  logs = launch(config_file, two, 4, PROCESSES="2", DEVICES="1")
  assert "resumed from" in logs and "at step 2" in logs
  same_metrics(read_metrics(two), uninterrupted, 1e-6)
  launch(config_file, one, 4, DEVICES="2")  # the same 2-device mesh in one process
  same_metrics(read_metrics(two), read_metrics(one), 1e-4)
