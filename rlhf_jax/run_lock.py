"""One process per run directory: a lock held for the run's life.

Two processes writing one run directory interleave their metrics rows and checkpoints and both
exit 0 (issue 39). `held(path)` takes an exclusive `flock` on PATH/run.lock (run.P.lock for
process P of a multi-process job, so a job's processes never exclude each other), and writes
who holds it. The kernel drops the lock when its process dies, however it dies, so a lock is
never left behind; the file is, with its holder's line: a later run that finds a line but no
lock takes the run over and says whose it was. A second process while the lock is held gets a
one-line error naming the holder.
"""

import contextlib
import fcntl
import os
import socket
import time

from absl import logging
import jax

from rlhf_jax.errors import UserError


def lock_file(path: str) -> str:
  index = jax.process_index() if jax.process_count() > 1 else None
  return os.path.join(path, "run.lock" if index is None else f"run.{index}.lock")


@contextlib.contextmanager
def held(path: str):
  """Holds `path`'s run lock inside the block; raises UserError if another process holds it."""
  os.makedirs(path, exist_ok=True)
  name = lock_file(path)
  with open(name, "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise UserError(f"{path} is in use by another process ({holder(f) or 'holder unknown'}): "
                      "wait for it to end, or stop it, before running this command again") from None
    left = holder(f)
    if left:
      logging.warning("%s: taking over the run from %s, which ended without releasing it", path, left)
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    try:
      yield
    finally:
      f.seek(0)
      f.truncate()  # released cleanly: the next run finds no holder's line
      f.flush()
      fcntl.flock(f, fcntl.LOCK_UN)


def holder(f) -> str:
  """The holder's line in an open lock file ("" if none)."""
  f.seek(0)
  return f.read().strip()
