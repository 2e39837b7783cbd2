"""The fault suite: real kills of `python -m rlhf_jax.main`, corrupted checkpoints, injected NaNs.

A run killed with SIGKILL at a random moment (a random step, then a random delay into the
step, eval or checkpoint write that follows) and started again with the same command must log
exactly (bitwise) the metrics of the uninterrupted run; SIGTERM must checkpoint and exit 0.
The moments are drawn from a fresh seed, printed on failure. `tests/soak.py` does the same
many times over.
"""

import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import pretrain
from rlhf_jax import stages
from rlhf_jax.errors import UserError
from tests.conftest import shrink, xla_flags
from tests.test_main import ROOT, read_metrics

# Every stage shrunk as the other tests shrink it, logging every step and checkpointing often,
# so a kill may land anywhere: in a step, an eval, a checkpoint write.
CONFIG = """
from configs import dpo, ppo, pretrain
from tests.conftest import make_tiny_ppo, shrink

UPSTREAM = {upstream!r}
STEPS = {steps!r}  # the default (None) keeps each stage's

def get_config(stage):
  if stage == "pretrain":
    config = shrink(pretrain.get_config("tiny"), steps=24)  # SIGTERM'd by step ~11: well before the end
    config.train.update(dict(checkpoint_every=3, eval_every=12))
  else:
    config = shrink(dpo.get_config("tiny"), steps=6) if stage == "dpo" else make_tiny_ppo()
    del config.upstream
    echo = "tests/training/rl/echo_environment.py"  # the `echo` environment and the `short` reward
    if stage == "ppo_async":  # ... and the two rollouts in flight, sampled on a device of its own
      config.rl.off_policy_steps = 2  # and scored on the host too: their host scores are in the queue
      config.rollout.devices = 1
      config.reward.fns = ("model", echo + ":short")
    config.update(dict(eval_prompts=8, max_prompt_len=24, **UPSTREAM))
    config.sample.max_new_tokens = 16
    if stage == "multi_turn":  # ... and trajectories of turns, an environment answering each, one
      config.update(dict(algo="reinforce", plugins=(echo,)))  # iteration behind: a rollout in the queue;
      # state only some configs carry: REINFORCE's moving-average baseline and the adaptive KL coefficient
      config.rl.update(dict(adaptive_kl=True, kl_target=0.01, kl_horizon=100.0))
      config.rl.off_policy_steps = 1
      config.reward.fns = (echo + ":short", "model")  # the reward model scores the whole transcript
      config.env.update(dict(name="echo", max_turns=3, turn_tokens=6))
      config.sample.max_new_tokens = 40
    config.train.update(dict(num_steps=4, checkpoint_every=1, eval_every=4))
  config.train.update(dict(log_every=1, num_steps=STEPS or config.train.num_steps))
  return config
"""


def write_config(directory, upstream=None, steps=None) -> str:
  path = os.path.join(directory, "faults_config.py")
  with open(path, "w") as f:
    f.write(CONFIG.format(upstream=upstream or {}, steps=steps))
  return path


def start(config_file: str, stage: str, workdir) -> subprocess.Popen:
  """The run's command in a child process, its output to a file (read by `finish`); the
  asynchronous stage on 2 devices (one samples, one trains)."""
  env = dict(os.environ, XLA_FLAGS=xla_flags(2)) if stage == "ppo_async" else None
  with open(f"{workdir}.log", "w") as log:
    return subprocess.Popen([sys.executable, "-m", "rlhf_jax.main", f"--config={config_file}:{stage}",
                             f"--workdir={workdir}"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def finish(process: subprocess.Popen, workdir) -> str:
  """The run's output, once it has exited; it must hold no library's INFO lines."""
  process.wait(timeout=600)
  with open(f"{workdir}.log") as f:
    log = f.read()
  assert not library_info_lines(log), library_info_lines(log)[:5]
  return log


def our_logging_lines() -> set:
  """(file name, line) of every line of the package that holds a logging call."""
  found = set()
  for path in glob.glob(os.path.join(ROOT, "rlhf_jax", "**", "*.py"), recursive=True):
    with open(path) as f:
      found |= {(os.path.basename(path), i + 1) for i, line in enumerate(f) if "logging." in line}
  return found


def library_info_lines(log: str) -> list:
  """absl INFO lines ("I1202 02:10:09.758 1404 file.py:51] ...") that no logging call of ours
  wrote: matched by file name and line, since libraries reuse our file names (checkpoint.py)."""
  ours = our_logging_lines()
  found = re.findall(r"^I\d{4} [\d:.]+ +\d+ (\S+):(\d+)\] (.*)$", log, re.MULTILINE)
  return [f"{name}:{line}] {text}" for name, line, text in found if (name, int(line)) not in ours]


def logged_steps(workdir) -> int:
  """The last step this process has logged ("step N/M ..." lines of its output)."""
  if not os.path.exists(f"{workdir}.log"):
    return 0
  with open(f"{workdir}.log") as f:
    return max(map(int, re.findall(r"step (\d+)/\d+ ", f.read())), default=0)


def newest_checkpoint(workdir) -> int:
  """The newest finished checkpoint's step (orbax renames a step's directory to its number
  once written); 0 for none."""
  directory = os.path.join(workdir, "checkpoints")
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return max((int(name) for name in names if name.isdigit()), default=0)


def resumed_from(log: str) -> list[int]:
  """The steps a run's output says it resumed from."""
  return [int(step) for step in re.findall(r"resumed from \S+ at step (\d+)", log)]


def interrupt(config_file, stage, workdir, sig, after_step: int, delay: float) -> tuple[int, str]:
  """Starts the run, waits for it to log `after_step` (0: not at all) and to have a finished
  checkpoint, waits `delay` seconds more, sends `sig`; returns (exit status, output)."""
  process = start(config_file, stage, workdir)
  while after_step and (logged_steps(workdir) < after_step or not newest_checkpoint(workdir)) \
      and process.poll() is None:
    time.sleep(0.02)
  time.sleep(delay)
  process.send_signal(sig)
  log = finish(process, workdir)
  return process.returncode, log


def run_to_end(config_file, stage, workdir) -> str:
  process = start(config_file, stage, workdir)
  log = finish(process, workdir)
  assert process.returncode == 0, log[-3000:]
  return log


def assert_same_run(resumed, whole, seed) -> None:
  assert read_metrics(resumed) == read_metrics(whole), f"fault seed {seed}"
  summaries = [json.load(open(os.path.join(d, "summary.json"))) for d in (resumed, whole)]
  for summary in summaries:
    summary.pop("train_seconds_this_session")
  assert summaries[0] == summaries[1], f"fault seed {seed}"


def test_pretraining_killed_then_preempted_resumes_to_the_same_metrics(tmp_path):
  seed = random.randrange(10**6)
  rng = random.Random(seed)
  config_file, whole, resumed = write_config(tmp_path), tmp_path / "whole", tmp_path / "resumed"
  run_to_end(config_file, "pretrain", whole)
  kill_at = rng.randint(2, 8)
  code, _ = interrupt(config_file, "pretrain", resumed, signal.SIGKILL, kill_at, rng.uniform(0, 0.3))
  assert code == -signal.SIGKILL and not os.path.exists(resumed / "summary.json"), seed
  # Each restart resumes from the newest checkpoint there, not from scratch: a run that started
  # over would log the very same metrics, since the log is cut back to the step it starts at.
  newest = newest_checkpoint(resumed)
  code, log = interrupt(config_file, "pretrain", resumed, signal.SIGTERM, kill_at + 2, 0.0)
  assert newest >= 1 and resumed_from(log) == [newest], (seed, newest, log[-3000:])
  # SIGTERM: the step in flight finishes, a checkpoint is written, exit 0 with a line saying so.
  assert code == 0 and "preempted after step" in log, (seed, log[-3000:])
  stopped_at = int(log.split("preempted after step ")[1].split(":")[0])
  assert os.path.isdir(resumed / "checkpoints" / str(stopped_at)), seed
  assert not os.path.exists(resumed / "summary.json")
  log = run_to_end(config_file, "pretrain", resumed)
  assert resumed_from(log) == [stopped_at], seed
  assert_same_run(resumed, whole, seed)


# PPO's critic (and its optimizer state) is resumed in ppo_async, with the queue (multi_turn has
# one too: its trajectories, one iteration behind, with their host scores); synchronous
# PPO's resume is also the LoRA test's (tests/training/test_lora_stages.py) and the two-process one's;
# multi_turn's REINFORCE carries a moving-average baseline and an adaptive KL coefficient.
@pytest.mark.parametrize("stage", ["ppo_async", "multi_turn", "dpo"])
def test_rl_and_dpo_killed_at_a_random_moment_resume_to_the_same_metrics(stage, tiny_upstream, tmp_path):
  seed = random.randrange(10**6)
  rng = random.Random(seed)
  config_file = write_config(tmp_path, tiny_upstream)
  run_to_end(config_file, stage, tmp_path / "whole")
  resumed = tmp_path / "resumed"
  code, _ = interrupt(config_file, stage, resumed, signal.SIGKILL, rng.randint(2, 3), rng.uniform(0, 0.3))
  assert code == -signal.SIGKILL and not os.path.exists(resumed / "summary.json"), seed
  newest = newest_checkpoint(resumed)
  log = run_to_end(config_file, stage, resumed)
  assert newest >= 1 and resumed_from(log) == [newest], (seed, newest, log[-3000:])
  assert_same_run(resumed, tmp_path / "whole", seed)
  if stage in ("ppo_async", "multi_turn"):  # the queue is in each checkpoint; the sampler's log-probs are the trainer's
    assert "pending" in os.listdir(resumed / "checkpoints" / str(newest_checkpoint(resumed)))
    rows = [row for row in read_metrics(resumed) if "rl/staleness" in row]
    assert len(rows) == 4 and all(row["rl/staleness"] < 1e-4 for row in rows)


def whole_and_killed_copy(tmp_path, checkpoint_every: int):
  """A finished 12-step pretraining run in tmp_path/whole, and its copy in tmp_path/broken as
  if killed after its last checkpoint: (config, the whole run's summary)."""
  config = shrink(pretrain.get_config("tiny"), steps=12)
  config.train.update(dict(checkpoint_every=checkpoint_every, eval_every=12, log_every=1))
  whole = stages.run(config.copy_and_resolve_references(), str(tmp_path / "whole"))
  shutil.copytree(tmp_path / "whole", tmp_path / "broken")
  os.remove(tmp_path / "broken" / "summary.json")
  return config, whole


def resumes_as_the_whole_run(tmp_path, config, whole) -> None:
  resumed = stages.run(config.copy_and_resolve_references(), str(tmp_path / "broken"))
  assert read_metrics(tmp_path / "broken") == read_metrics(tmp_path / "whole")
  assert resumed["eval/loss"] == whole["eval/loss"]


def test_unreadable_and_half_written_checkpoints_are_set_aside_and_the_run_resumes(tmp_path, caplog):
  config, whole = whole_and_killed_copy(tmp_path, checkpoint_every=3)
  for path in (tmp_path / "broken" / "checkpoints" / "12").rglob("*"):  # cut every file short
    if path.is_file() and path.stat().st_size > 1:
      os.truncate(path, path.stat().st_size // 2)
  half = tmp_path / "broken" / "checkpoints" / "15.orbax-checkpoint-tmp"
  shutil.copytree(tmp_path / "broken" / "checkpoints" / "9", half)  # a write a kill cut off
  resumes_as_the_whole_run(tmp_path, config, whole)
  assert "12 is unreadable" in caplog.text and "half-written checkpoint" in caplog.text
  assert os.path.isdir(tmp_path / "broken" / "checkpoints" / "12.unreadable") and not half.exists()


def test_bytes_damaged_on_disk_fail_their_checksum_and_the_run_resumes_from_the_step_before(tmp_path, caplog):
  # Issue 39: 4 KiB of random bytes in the newest checkpoint's largest file restored silently
  # (weights up to 3e38), and training then diverged.
  config, whole = whole_and_killed_copy(tmp_path, checkpoint_every=6)
  # Bytes that still decode, as damage inside an array's data does (random bytes elsewhere
  # break the file's structure, which the restore reports by itself): step 6's params in step 12.
  damaged = tmp_path / "broken" / "checkpoints" / "12" / "params"
  shutil.rmtree(damaged)
  shutil.copytree(tmp_path / "whole" / "checkpoints" / "6" / "params", damaged)
  resumes_as_the_whole_run(tmp_path, config, whole)
  assert re.search(r"checkpoint \S+/12 is unreadable, so it is set aside as 12.unreadable \(checksum mismatch "
                   r"in params/.*; trying step 6", caplog.text), caplog.text[-2000:]
  assert os.path.isdir(tmp_path / "broken" / "checkpoints" / "12.unreadable")


def test_a_resume_that_changes_the_run_is_refused_and_one_that_changes_logging_is_not(tmp_path, caplog):
  config = shrink(pretrain.get_config("tiny"), steps=4)
  config.train.update(dict(num_steps=2, checkpoint_every=2, eval_every=2))
  stages.run(config.copy_and_resolve_references(), str(tmp_path / "run"))
  config.train.num_steps = 4  # trained further: the same run
  os.remove(tmp_path / "run" / "summary.json")
  for field, value in (("seed", 1), ("data.batch_size", 4), ("model.init_std", 0.01)):
    changed = config.copy_and_resolve_references()
    parent, _, name = field.rpartition(".")
    (changed[parent] if parent else changed)[name] = value
    with pytest.raises(UserError, match=rf"was started with other values of {field}: resuming would continue"):
      stages.run(changed, str(tmp_path / "run"))
  config.train.log_every = 1
  summary = stages.run(config, str(tmp_path / "run"))
  assert summary["step"] == 4 and "changed config fields: train.log_every, train.num_steps" in caplog.text


def snapshot(directory) -> dict:
  """Every path under `directory` with its size and modification time."""
  return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(directory.rglob("*"))}


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_starting_point_is_read_only_and_its_damaged_final_step_is_one_line(damage, tiny_sft, tmp_path):
  # Issue 39: an SFT run whose final checkpoint was unreadable was silently replaced by its
  # step before, renamed 200.unreadable, and the RL run started from there.
  source = tmp_path / "pretrain"
  config = shrink(pretrain.get_config("tiny"), steps=4)
  config.train.update(dict(checkpoint_every=2, eval_every=4))
  stages.run(config, str(source))
  final = source / "checkpoints" / "4"
  if damage == "missing":
    shutil.rmtree(final)
  for path in final.rglob("*"):
    if path.is_file() and path.stat().st_size > 1:
      os.truncate(path, path.stat().st_size // 2)
  before = snapshot(source)
  tiny_sft.init_from = str(source)
  with pytest.raises(UserError, match=rf"checkpoint {final} is (unreadable: .*|missing)$"):
    stages.run(tiny_sft, str(tmp_path / "sft"))
  assert snapshot(source) == before


def test_non_finite_loss_stops_with_a_checkpoint_or_is_skipped(tmp_path):
  config = shrink(pretrain.get_config("tiny"), steps=6)
  config.train.update(dict(checkpoint_every=6, eval_every=6, log_every=1, inject_nan_at=(4,)))
  with pytest.raises(UserError, match=r"step 4: non-finite grads and loss; that update was not applied "
                                     r"\(checkpoint of step 5 in "):
    stages.run(config.copy_and_resolve_references(), str(tmp_path / "stop"))
  assert os.path.isdir(tmp_path / "stop" / "checkpoints" / "5")  # read once step 5 was queued
  assert read_metrics(tmp_path / "stop")[-1]["nonfinite_loss"] == 1
  config.train.on_nonfinite = "skip"
  summary = stages.run(config, str(tmp_path / "skip"))
  rows = {row["step"]: row for row in read_metrics(tmp_path / "skip") if "skipped_updates" in row}
  assert [rows[s]["skipped_updates"] for s in range(1, 7)] == [0, 0, 0, 1, 0, 0]
  assert rows[4]["nonfinite_loss"] == 1 and np.isfinite(summary["eval/loss"])


def test_a_run_that_failed_at_its_last_step_stays_failed_until_told_to_resume(tmp_path):
  # Issue 39: a refused update at the last step used to checkpoint that step, and a plain rerun
  # then wrote summary.json as if the run had finished.
  config = shrink(pretrain.get_config("tiny"), steps=6)
  config.train.update(dict(checkpoint_every=6, eval_every=6, log_every=1, inject_nan_at=(6,)))
  workdir = tmp_path / "run"
  cause = r"step 6: non-finite grads and loss; that update was not applied \(checkpoint of step 6 in "
  with pytest.raises(UserError, match=cause):
    stages.run(config.copy_and_resolve_references(), str(workdir))
  status = json.load(open(workdir / "status.json"))
  assert status["state"] == "failed" and status["cause"].startswith("step 6: non-finite")
  rows = read_metrics(workdir)
  for _ in range(2):  # every rerun repeats it, and writes nothing
    with pytest.raises(UserError, match=rf"{workdir} failed: {cause}.*resume_failed=True resumes it"):
      stages.run(config.copy_and_resolve_references(), str(workdir))
    assert not (workdir / "summary.json").exists() and read_metrics(workdir) == rows
  config.train.resume_failed = True
  summary = stages.run(config, str(workdir))
  assert summary["step"] == 6 and json.load(open(workdir / "status.json"))["state"] == "finished"
