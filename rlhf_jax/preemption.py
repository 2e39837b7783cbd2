"""Preemption notices: SIGTERM, which TPU VMs, SLURM and Kubernetes send before they stop a job.

`listen()` (called once by `main`) turns SIGTERM into a flag; the host loop asks
`reached(step)` after every step and, when it says so, checkpoints and stops cleanly. With
several processes JAX's own preemption service (started by `jax.distributed.initialize`)
takes SIGTERM instead, and `reached` is its sync point: every process stops at the same
step, the first one all of them reach after any of them got the notice.
"""

import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils

_notice = threading.Event()


def _handle(signum, frame) -> None:
  del frame
  logging.warning("got %s: the run checkpoints after this step and exits", signal.Signals(signum).name)
  _notice.set()


def listen() -> None:
  """Installs the SIGTERM handler of a single-process run (from the main thread only)."""
  if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _handle)


def reached(step: int) -> bool:
  """Whether to checkpoint and stop after `step`. Every process must call it at every step."""
  if jax.process_count() > 1:
    return multihost_utils.reached_preemption_sync_point(step)
  return _notice.is_set()
