"""vLLM's engine in a process of its own (`rollout.engine=vllm` with `rollout.devices = N > 0`):
it samples the next rollout while the trainer updates on the oldest (off-policy, K >= 1).

The process is spawned (a fresh interpreter: it never inherits the trainer's JAX state) and
hosts the same engine as the in-process mode (vllm_engine.VLLMEngine: its settings, push,
`refresh_tied_heads`, sampling). `EngineProcess` is its client, with the engine's interface
(`push`, `push_adapters`, `sample`, `submit`/`receive`, `rest`) over a multiprocessing pipe:
weights as numpy arrays under the export's Hugging Face names (LoRA adapters as a directory's
path: vllm_lora.py), requests as token-id lists and sampling options,
responses as token ids and log-probs. `submit` only sends, so the trainer updates while the
engine samples, and `receive` waits for the answer.

Its devices (`placement`): on a CPU the last N of the cores this process may run on (the
engine's process is pinned to them, its threads N); on GPUs the last N of JAX's GPUs, named in
the process's CUDA_VISIBLE_DEVICES before torch starts, which the trainer's mesh leaves out
(rl_setup.meshes) - JAX must then not preallocate their memory (XLA_PYTHON_CLIENT_PREALLOCATE=
false), and this split is not tested (no GPU here). On GPUs one would push the weights over
NCCL or CUDA IPC as verl and OpenRLHF do; the numpy push through the pipe is a CPU's.

If the process dies, or gives no answer to one call (its start-up, a push, a rollout) within
`rollout.vllm.timeout_s`, the run stops with one line (`EngineProcessError`; a silent process
is stopped); the trainer checks the process is alive while it waits. The process
ignores SIGTERM and SIGINT (the trainer checkpoints, then closes it) and exits when the
trainer's end of the pipe closes, so it never outlives the trainer.
"""

import dataclasses
import multiprocessing
import os
import signal
import time

import jax
import numpy as np

from rlhf_jax.errors import UserError
from rlhf_jax.interop import vllm_engine, vllm_lora

POLL_SECONDS = 1.0  # how often a waiting trainer checks that the engine's process is alive
METHODS = ("load", "load_adapter", "sample", "rest")  # what the client may call on the engine


class EngineProcessError(UserError):
  """The engine's process died or failed: the run stops, its last checkpoint intact."""


@dataclasses.dataclass(frozen=True)
class Placement:
  """The engine process's share of the machine."""
  cores: tuple = ()  # CPU: the cores it is pinned to
  cuda_devices: tuple = ()  # GPU: its CUDA_VISIBLE_DEVICES


def placement(n: int) -> Placement:
  """The last `n` cores (CPU) or GPUs of this process's for the engine; one-line errors where
  that leaves none to train on or cannot be built."""
  platform = jax.default_backend()
  if platform == "cpu":
    cores = sorted(os.sched_getaffinity(0))
    if n >= len(cores):
      raise UserError(f"rollout.devices={n} with rollout.engine=vllm gives the engine {n} of the {len(cores)} "
                      "cores, leaving none to train on")
    return Placement(cores=tuple(cores[-n:]))
  if platform != "gpu":
    raise UserError(f"rollout.engine=vllm on devices of its own is not supported on {platform} (the push hands "
                    "torch tensors): keep rollout.devices=0")
  devices = jax.local_devices()
  if n >= len(devices):
    raise UserError(f"rollout.devices={n} leaves none of the {len(devices)} GPUs to train on")
  if os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE") != "false":
    raise UserError("rollout.engine=vllm on GPUs of its own needs XLA_PYTHON_CLIENT_PREALLOCATE=false: JAX would "
                    "reserve most of the engine's GPUs' memory")
  visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
  ordinals = [d.local_hardware_id for d in devices[-n:]]
  return Placement(cuda_devices=tuple(visible[o] if visible != [""] else str(o) for o in ordinals))


def training_devices(n: int) -> list:
  """JAX's devices left to train on when the engine's process takes `n` (GPUs: the last n)."""
  devices = jax.devices()
  return devices[:-n] if jax.default_backend() == "gpu" else devices


def take_devices(where: Placement) -> None:
  """In the engine's process, before torch starts: its cores or GPUs only."""
  if where.cuda_devices:
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(where.cuda_devices)
  if where.cores:
    os.sched_setaffinity(0, where.cores)  # the threads torch and vLLM start inherit it
    os.environ["OMP_NUM_THREADS"] = str(len(where.cores))
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(len(where.cores))


def serve(conn, model_dir: str, max_len: int, settings: vllm_engine.EngineSettings, where: Placement,
          lora_rank: int = 0) -> None:
  """The engine process's main: starts the engine, then answers the client's calls in order
  until told to close or the trainer's end of the pipe closes."""
  for sig in (signal.SIGTERM, signal.SIGINT):  # the trainer checkpoints first, then closes us
    signal.signal(sig, signal.SIG_IGN)
  take_devices(where)
  engine = answer(conn, lambda: vllm_engine.VLLMEngine(model_dir, max_len=max_len, settings=settings, seed=0,
                                                       lora_rank=lora_rank), send_result=False)
  while engine is not None:
    try:
      message = conn.recv()
    except (EOFError, OSError):  # the trainer is gone
      return
    if message is None:
      return
    method, args, kwargs = message
    answer(conn, lambda: getattr(engine, method)(*args, **kwargs))


def answer(conn, call, send_result: bool = True):
  """Runs `call` and sends ("ok", its result, seconds), or ("error", a UserError it raised or
  the text of another exception, 0); returns the result (None when it raised)."""
  started = time.perf_counter()
  try:
    result = call()
  except Exception as e:  # pylint: disable=broad-except  (the trainer decides what stops the run)
    conn.send(("error", e if isinstance(e, UserError) else f"{type(e).__name__}: {first_line(e)}", 0.0))
    return None
  conn.send(("ok", result if send_result else None, time.perf_counter() - started))
  return result


def first_line(e: Exception) -> str:
  return (str(e).splitlines() or [""])[0]


class EngineProcess:
  """The client of vLLM's engine in its own process: `push`, `sample`, `submit`/`receive` and
  `rest` as vllm_engine.VLLMEngine has them."""

  def __init__(self, model_dir: str, *, max_len: int, settings: vllm_engine.EngineSettings, where: Placement,
               lora_rank: int = 0):
    if not vllm_engine.available():
      raise UserError(vllm_engine.INSTALL)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no JAX state inherited
    self.conn, child = context.Pipe()
    self.process = context.Process(target=serve, args=(child, model_dir, max_len, settings, where, lora_rank),
                                   daemon=True, name="vllm-engine")
    self.process.start()
    child.close()  # ours closed: the pipe ends when the process does
    self.settings = settings
    self._reply()  # the engine started

  def push(self, params, model_cfg) -> dict:
    """Sends `params` (an LM's, LoRA merged) as numpy arrays; the push's metrics."""
    return vllm_engine.pushed(self.load, np.asarray, params, model_cfg)

  def load(self, named: list, *, n_experts: int = 0) -> None:
    self._send("load", named, n_experts=n_experts)
    self._reply()

  def push_adapters(self, params, model_cfg) -> dict:
    """Writes a LoRA policy's adapters for the engine's process to load (vllm_lora.py); the push's metrics."""
    return vllm_lora.pushed_adapters(self.load_adapter, params, model_cfg)

  def load_adapter(self, directory: str) -> None:
    self._send("load_adapter", directory)
    self._reply()

  def submit(self, prompts: list, seeds, **options) -> None:
    """Sends a sampling request (vllm_engine.VLLMEngine.sample's arguments) and returns at once."""
    self._send("sample", [[int(t) for t in p] for p in prompts], [int(s) for s in seeds], **options)

  def receive(self, _=None) -> tuple:
    """(the arrays of the oldest request not yet received, the seconds the engine took)."""
    return self._reply()

  def sample(self, prompts: list, seeds, **options) -> tuple:
    self.submit(prompts, seeds, **options)
    return self.receive()[0]

  def rest(self) -> None:
    if self.settings.sleep:
      self._send("rest")
      self._reply()

  def close(self) -> None:
    """Stops the engine's process (asked first, then terminated)."""
    if self.process.is_alive():
      try:
        self.conn.send(None)
      except OSError:
        pass
      self.process.join(timeout=30)
    if self.process.is_alive():
      self.process.terminate()
      self.process.join(timeout=10)
    self.conn.close()

  def _send(self, method: str, *args, **kwargs) -> None:
    assert method in METHODS, method
    try:
      self.conn.send((method, args, kwargs))
    except OSError as e:
      raise self._died() from e

  def _reply(self):
    """The engine's next answer, (result, seconds); raises what the engine raised, or
    EngineProcessError if its process died or gave no answer in `rollout.vllm.timeout_s`."""
    started = time.monotonic()
    while not self.conn.poll(POLL_SECONDS):
      if not self.process.is_alive():
        raise self._died()
      if self.settings.timeout_s and time.monotonic() - started > self.settings.timeout_s:
        raise self._stuck()
    try:
      status, value, seconds = self.conn.recv()
    except (EOFError, OSError) as e:
      raise self._died() from e
    if status == "error":
      raise value if isinstance(value, UserError) else EngineProcessError(f"vLLM's engine process failed: {value}")
    return value, seconds

  def _stuck(self) -> EngineProcessError:
    self.process.terminate()  # alive but silent: a hung kernel or a deadlock; nothing more will come
    self.process.join(timeout=10)
    return EngineProcessError(f"vLLM's engine process (pid {self.process.pid}) gave no answer in "
                              f"{self.settings.timeout_s:g} s (rollout.vllm.timeout_s) and was stopped; the last "
                              "checkpoint is intact")

  def _died(self) -> EngineProcessError:
    self.process.join(timeout=5)
    return EngineProcessError(f"vLLM's engine process (pid {self.process.pid}) died (exit code "
                              f"{self.process.exitcode}); the last checkpoint is intact")
