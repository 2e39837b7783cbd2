"""The built-in python tool's sandbox: whatever the code does costs only its own call."""

import os

import pytest

from rlhf_jax.envs import sandbox

LIMITS = sandbox.Limits(seconds=1.0, memory_mb=256, output_bytes=2000)


def run(code):
  return sandbox.run_python(code, LIMITS)


def test_a_program_runs_and_prints_in_its_scratch_directory():
  out = run("open('notes.txt', 'w').write('6 * 7'); print(eval(open('notes.txt').read()))")
  assert (out.output, out.error) == ("42\n", None)


@pytest.mark.parametrize("code,error", [
    ("1 / 0", "ZeroDivisionError: division by zero"),
    ("while True: pass", "timed out after 1 s"),
    ("import time; time.sleep(60)", "timed out after 1 s"),
    ("while True: print('x' * 1000)", "output over 2000 bytes"),
    ("x = bytearray(10 ** 9)", "out of memory (256 MB)"),
    ("import os; os.fork()", "sandbox: os.fork is not allowed"),
    ("import subprocess; subprocess.run(['ls'])", "sandbox: subprocess.Popen is not allowed"),
    ("import os; os.system('ls')", "sandbox: os.system is not allowed"),
    ("import socket; socket.create_connection(('127.0.0.1', 9), timeout=1)", "is not allowed"),
    ("import ctypes", "sandbox: import ctypes is not allowed"),
])
def test_what_goes_wrong_is_an_error_not_an_exception(code, error):
  out = run(code)
  assert out.error is not None and error in out.error, out
  assert out.seconds < LIMITS.seconds + 3


def test_nothing_is_written_or_removed_outside_the_scratch_directory(tmp_path):
  target, keep = tmp_path / "escape.txt", tmp_path / "keep.txt"
  keep.write_text("mine")
  for code in (f"open({str(target)!r}, 'w').write('x')", f"import os; os.remove({str(keep)!r})",
               f"import os; os.rename({str(keep)!r}, 'stolen')", f"import shutil; shutil.rmtree({str(tmp_path)!r})"):
    assert "outside the scratch directory" in run(code).error
  assert not target.exists() and keep.read_text() == "mine"


def test_a_timed_out_program_leaves_no_process_behind():
  out = run("import time\nprint('started', flush=True)\ntime.sleep(60)")
  assert out.error == "timed out after 1 s" and out.output == "started\n"
  assert not [p for p in os.listdir("/proc") if p.isdigit() and _is_tool(p)]


def _is_tool(pid: str) -> bool:
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      return b"_SCRATCH" in f.read()
  except OSError:
    return False
