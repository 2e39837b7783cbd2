"""Multi-host runs: every process runs the same command, and JAX's multi-controller runtime
joins them into one set of global devices (`jax.distributed.initialize`).

Called once, before anything touches a device. `config.distributed` or the environment
decides (see configs/common.py:distributed_config); RLHF_JAX_DISTRIBUTED=auto does what
`distributed.auto` does, for launchers that run sweeps. After it, `jax.devices()` lists every
process's devices, each process feeds its own rows of each batch, and only process 0 writes
logs and run files (orbax writes checkpoints collectively).
"""

import os

from absl import logging
import jax

from rlhf_jax.errors import UserError


def settings(cfg, environ=os.environ) -> dict | None:
  """The arguments for `jax.distributed.initialize`, or None for a single-process run."""
  if cfg is None:
    return None
  if cfg.auto or environ.get("RLHF_JAX_DISTRIBUTED") == "auto":
    return {}  # JAX reads the cluster (TPU pod slice, SLURM, Open MPI, Kubernetes) itself
  coordinator = cfg.coordinator or environ.get("JAX_COORDINATOR_ADDRESS", "")
  if not coordinator:
    return None
  num_processes = cfg.num_processes or int(environ.get("JAX_NUM_PROCESSES", 0))
  process_id = cfg.process_id if cfg.process_id >= 0 else int(environ.get("JAX_PROCESS_ID", -1))
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise UserError(f"coordinator {coordinator} given, but num_processes={num_processes} and "
                    f"process_id={process_id}: set distributed.num_processes and distributed.process_id "
                    "(or JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
  return dict(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def split_cpu(count: int) -> None:
  """Makes the CPU backend `count` devices (0: JAX's default, one). With one, the many small
  ops of a small model run one after another on a CPU host; with one device per core, the
  data axis runs each core's rows in parallel."""
  if count <= 0:
    return
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError as e:
    raise UserError(f"distributed.cpu_devices={count}: this process has already set up its devices") from e


def initialize(cfg) -> None:
  split_cpu(cfg.get("cpu_devices", 0) if cfg is not None else 0)
  args = settings(cfg)
  if args is None:
    return
  jax.distributed.initialize(**args)
  logging.info("process %d of %d: %d local devices, %d in all", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
