"""Multi-host: settings from config or environment, and a real two-process `jax.distributed`
run of the (shrunk) pipeline on localhost (launch/local.sh with PROCESSES=2): its PPO stage
checkpoints and restores, and every stage matches one process holding the same two devices.
A SIGTERM to one of two processes stops both at the same step, with a checkpoint."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
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


def test_cpu_split_into_devices_before_first_use():
  script = ("from rlhf_jax import distributed; distributed.split_cpu(2); import jax; "
            "print(jax.device_count(), jax.devices()[0].platform)")
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
  assert out.stdout.split() == ["2", "cpu"]
  jax.devices()  # this process's devices are set up from here on
  distributed.split_cpu(0)  # nothing to do, so no error
  with pytest.raises(UserError, match="cpu_devices=2: this process has already set up its devices"):
    distributed.split_cpu(2)


# The tiny pipeline, shrunk as the other tests shrink it: pretrain -> SFT -> reward -> 4 PPO iterations in its rl stage.
CONFIG = """
from configs import pipeline
from tests.conftest import make_tiny_ppo, make_tiny_reward, make_tiny_sft, shrink

def get_config(arg=None):
  config = pipeline.get_config("tiny")
  config.pretrain = shrink(config.pretrain, steps=10)
  for name, make in (("sft", make_tiny_sft), ("reward", make_tiny_reward), ("rl", make_tiny_ppo)):
    config[name] = make()
    del config[name].upstream
  config.rl.train.update(dict(eval_every=2, checkpoint_every=2))
  return config
"""


def launch(config_file, workdir, **env):
  command = ["bash", os.path.join(ROOT, "launch", "local.sh"), f"{config_file}:tiny", str(workdir)]
  result = subprocess.run(command, cwd=ROOT, env=dict(os.environ, **env), capture_output=True, text=True,
                          timeout=600)
  logs = "".join(open(os.path.join(workdir, name)).read() for name in sorted(os.listdir(workdir))
                 if name.startswith("log"))
  assert result.returncode == 0, logs[-3000:] + result.stderr[-3000:]
  return logs


def metrics_by_step(workdir) -> dict:
  merged = {}
  for metrics in read_metrics(workdir):  # a step's train and eval metrics are separate lines
    merged.setdefault(metrics["step"], {}).update(metrics)
  return merged


def same_metrics(ours, theirs, tolerance: float, steps) -> None:
  ours, theirs = metrics_by_step(ours), metrics_by_step(theirs)
  assert sorted(ours) == sorted(theirs) == steps
  for step, metrics in theirs.items():
    for key, value in metrics.items():
      if isinstance(value, float) and "seconds" not in key:
        assert abs(ours[step][key] - value) <= tolerance * max(1.0, abs(value)), (step, key, ours[step][key], value)


def test_two_processes_run_the_pipeline_restore_rl_and_match_one_process(tmp_path):
  config_file = tmp_path / "two_hosts.py"
  config_file.write_text(CONFIG)
  two, one = tmp_path / "two_processes", tmp_path / "one_process"
  logs = launch(config_file, two, PROCESSES="2", DEVICES="1")
  assert "process 1 of 2: 1 local devices, 2 in all" in logs
  shutil.copytree(two / "rl", tmp_path / "uninterrupted")
  # As if killed after PPO's checkpoint at step 2: the same command skips the finished
  # stages, restores PPO and goes on.
  shutil.rmtree(two / "rl" / "checkpoints" / "4")
  for summary in (two / "summary.json", two / "rl" / "summary.json"):
    os.remove(summary)
  logs = launch(config_file, two, PROCESSES="2", DEVICES="1")
  assert "resumed from" in logs and "at step 2" in logs
  same_metrics(two / "rl", tmp_path / "uninterrupted", 1e-6, [1, 2, 3, 4])
  logs = launch(config_file, one, DEVICES="2")  # the same 2-device mesh in one process
  assert "PPO vs SFT by the gold judge" in logs and "eval/accuracy" in logs  # the pipeline's closing table
  assert f"curves of every stage: {one / 'report.png'}" in logs
  assert all(os.path.getsize(d / "report.png") > 10000 for d in (one, one / "sft", one / "rl"))
  ppo_config = json.load(open(one / "rl" / "config.json"))
  assert ppo_config["init_from"] == str(one / "sft") and ppo_config["reward_from"] == str(one / "reward")
  for stage in ("pretrain", "sft", "reward", "rl"):
    same_metrics(two / stage, one / stage, 1e-4, sorted(metrics_by_step(one / stage)))


def test_sigterm_to_one_process_stops_both_at_the_same_step_with_a_checkpoint(tmp_path):
  """JAX's preemption service takes the signal; both processes reach the same sync step,
  checkpoint together and exit 0 (so launch/local.sh exits 0 too)."""
  workdir = tmp_path / "run"
  overrides = ["--config.tokenizer.kind=byte", "--config.train.num_steps=1000", "--config.train.log_every=1",
               "--config.train.checkpoint_every=500", "--config.data.embedded_docs=400"]
  command = ["bash", os.path.join(ROOT, "launch", "local.sh"), "configs/pretrain.py:tiny", str(workdir), *overrides]
  launcher = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, PROCESSES="2", DEVICES="1"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  log = workdir / "log.txt"
  deadline = time.time() + 300
  while not (log.exists() and "step 5/" in log.read_text()) and time.time() < deadline:
    time.sleep(0.2)
  mains = subprocess.run(["pgrep", "-f", f"rlhf_jax.main .*--workdir={workdir}"], capture_output=True,
                         text=True).stdout.split()
  assert len(mains) == 2, mains
  os.kill(int(mains[-1]), signal.SIGTERM)  # one of the two processes only
  assert launcher.wait(timeout=300) == 0
  stops = [re.findall(r"preempted after step (\d+):", (workdir / name).read_text())
           for name in ("log.txt", "log_process_1.txt")]
  assert stops[0] == stops[1] and len(stops[0]) == 1, stops
  assert int(stops[0][0]) < 1000 and os.path.isdir(workdir / "checkpoints" / stops[0][0])
