"""One process per run directory (issue 39, item 3): a second process gets one line naming the
holder and writes nothing; a holder killed with SIGKILL leaves its line, and the next run takes
the directory over with a warning."""

import os
import signal
import subprocess
import sys

import pytest

from rlhf_jax import run_lock, stages
from rlhf_jax.errors import UserError

HOLD = """
import sys, time
from rlhf_jax import run_lock
with run_lock.held(sys.argv[1]):
  print("held", flush=True)
  time.sleep(600)
"""


def hold_in_another_process(path):
  holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert holder.stdout.readline().strip() == "held"
  return holder


def test_a_second_process_is_refused_then_takes_over_from_a_killed_holder(tmp_path, caplog):
  holder = hold_in_another_process(tmp_path)
  try:
    with pytest.raises(UserError, match=rf"{tmp_path} is in use by another process \(pid {holder.pid} on .*\)"):
      with run_lock.held(str(tmp_path)):
        pass
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with run_lock.held(str(tmp_path)):
    assert f"taking over the run from pid {holder.pid}" in caplog.text
  with open(run_lock.lock_file(str(tmp_path))) as f:
    assert f.read() == ""  # released cleanly: the next run finds no holder
  caplog.clear()
  with run_lock.held(str(tmp_path)):
    assert "taking over" not in caplog.text


def test_a_stage_whose_directory_is_held_stops_before_writing_anything(tiny_pretrain, tmp_path):
  workdir = tmp_path / "run"
  holder = hold_in_another_process(workdir)
  try:
    with pytest.raises(UserError, match="is in use by another process"):
      stages.run(tiny_pretrain, str(workdir))
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert os.listdir(workdir) == ["run.lock"]
