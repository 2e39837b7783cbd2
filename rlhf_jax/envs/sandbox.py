"""Runs model-written Python in a process of its own, with limits: the built-in `python` tool.

Each call gets a fresh interpreter (`python -I`: no site packages of the user, no environment
variables read) in a scratch directory of its own, started in a session of its own so that a
timeout kills it and everything it started. Limits:
  time     `seconds` of wall clock (a hang, a sleep) and as many of CPU (RLIMIT_CPU)
  memory   `memory_mb` of address space (RLIMIT_AS)
  output   `output_bytes` of stdout and stderr together: they go to a file in the scratch
           directory whose size RLIMIT_FSIZE caps, so a flood stops at the cap
  network  none: creating a socket raises
  files    writes, deletes, renames and new directories only inside the scratch directory
  processes  none: fork, exec, spawn, subprocess and os.system raise; ctypes cannot be imported
The last three are enforced by an audit hook (PEP 578) installed before the code runs, which the
code cannot remove. This confines Python code, which is what a policy writes; it is not a
container: native code that reaches the kernel another way is out of its reach, so untrusted
code at scale belongs in a container or a VM as well.

A call never raises: whatever goes wrong (the code raised, timed out, ran out of memory, flooded
its output, touched what it may not) comes back as a `ToolOutput` with `error` set, which the
environment turns into an error observation (and the trajectory's penalty).
"""

import dataclasses
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

# Runs inside the child before the user's code: the audit hook, then the code from stdin.
_PRELUDE = r'''
import os, sys
_SCRATCH = os.path.realpath(os.getcwd())
_WRITE = ("w", "a", "x", "+")
_BLOCKED = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
            "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "ctypes.dlopen",
            "os.kill", "os.killpg", "signal.pthread_kill"}
_PATHS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.chmod", "os.chown",
          "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move"}

def _inside(path):
  if isinstance(path, int):
    return True  # an open file descriptor: opened under these rules already
  real = os.path.realpath(os.fsdecode(path))
  return real == _SCRATCH or real.startswith(_SCRATCH + os.sep)

def _hook(event, args):
  if event in _BLOCKED or event.startswith("os.exec") or event.startswith("os.spawn"):
    raise PermissionError(f"sandbox: {event} is not allowed")
  if event == "import" and args[0] in ("ctypes", "_ctypes", "cffi", "mmap"):
    raise PermissionError(f"sandbox: import {args[0]} is not allowed")
  if event == "open" and args[0] is not None and isinstance(args[1], str) and any(m in args[1] for m in _WRITE):
    if not _inside(args[0]):
      raise PermissionError(f"sandbox: writing {args[0]} outside the scratch directory")
  if event in _PATHS:
    for path in args[:2]:
      if isinstance(path, (str, bytes, os.PathLike)) and not _inside(path):
        raise PermissionError(f"sandbox: {event} on {path} outside the scratch directory")

_code = sys.stdin.read()
sys.addaudithook(_hook)
del _hook
exec(compile(_code, "<tool>", "exec"), {"__name__": "__main__"})
'''


@dataclasses.dataclass(frozen=True)
class Limits:
  seconds: float = 5.0
  memory_mb: int = 512
  output_bytes: int = 4096


@dataclasses.dataclass(frozen=True)
class ToolOutput:
  output: str  # stdout and stderr, cut at the limit
  error: str | None  # None: it ran to the end and exited 0; else what went wrong, in one line
  seconds: float


def run_python(code: str, limits: Limits = Limits()) -> ToolOutput:
  """Runs `code` in a sandboxed interpreter; never raises for anything the code does."""
  scratch = tempfile.mkdtemp(prefix="rlhf_jax_tool_")
  started = time.monotonic()
  try:
    return _run(code, limits, scratch, started)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def _run(code: str, limits: Limits, scratch: str, started: float) -> ToolOutput:
  out_path = os.path.join(scratch, ".output")
  with open(out_path, "wb") as out:
    try:
      child = subprocess.Popen([sys.executable, "-I", "-c", _PRELUDE], cwd=scratch, stdin=subprocess.PIPE,
                               stdout=out, stderr=out, env={"PATH": "", "HOME": scratch, "TMPDIR": scratch},
                               start_new_session=True, preexec_fn=lambda: _limit(limits), close_fds=True)
    except OSError as e:
      return ToolOutput("", f"the tool could not start: {e}", time.monotonic() - started)
    error = None
    try:
      child.communicate(code.encode(), timeout=limits.seconds)
    except subprocess.TimeoutExpired:
      error = f"timed out after {limits.seconds:g} s"
    finally:
      _kill(child)
  with open(out_path, "rb") as f:
    text = f.read(limits.output_bytes).decode("utf-8", "replace")
  seconds = time.monotonic() - started
  if error is None and child.returncode != 0:
    error = _exit_reason(child.returncode, text, limits, os.path.getsize(out_path))
  return ToolOutput(text, error, seconds)


def _limit(limits: Limits) -> None:
  """In the child, before exec: its resource limits (inherited by anything it could start)."""
  cpu = max(1, int(limits.seconds + 1))
  resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
  memory = limits.memory_mb * 2**20
  resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
  resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output_bytes, limits.output_bytes))
  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _kill(child: subprocess.Popen) -> None:
  """The child's whole session: whatever it started dies with it."""
  try:
    os.killpg(child.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
  child.wait()


def _exit_reason(code: int, text: str, limits: Limits, written: int) -> str:
  if code in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ) or written >= limits.output_bytes:
    return f"output over {limits.output_bytes} bytes"
  if code in (-signal.SIGXCPU, -signal.SIGKILL):
    return f"used over {limits.seconds:g} s of CPU"
  lines = [line for line in text.strip().splitlines() if line.strip()]
  if "MemoryError" in text:
    return f"out of memory ({limits.memory_mb} MB)"
  return lines[-1][:200] if lines else f"exited with code {code}"
