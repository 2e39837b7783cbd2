"""The client of vLLM's engine in its own process, without vLLM: what it does when the process
stops answering."""

import multiprocessing

import pytest

from rlhf_jax.interop import vllm_engine, vllm_process

SETTINGS = vllm_engine.EngineSettings(dtype="float32", kv_cache_gib=0.25, gpu_memory_utilization=0.3, sleep=False,
                                      enforce_eager=True, timeout_s=0.3, lora_adapters=False)


class SilentProcess:
  """An engine process that is alive and never answers (a hung kernel, a deadlock)."""
  pid, exitcode = 4242, None

  def __init__(self):
    self.terminated = False

  def is_alive(self) -> bool:
    return not self.terminated

  def terminate(self) -> None:
    self.terminated = True

  def join(self, timeout=None) -> None:
    del timeout


def client(settings) -> tuple:
  """(the client, the engine's end of its pipe: kept open, as a live engine keeps it)."""
  engine = object.__new__(vllm_process.EngineProcess)  # its pipe and process, no vLLM started
  engine.conn, theirs = multiprocessing.Pipe()
  engine.process, engine.settings = SilentProcess(), settings
  return engine, theirs


def test_an_engine_process_that_gives_no_answer_in_time_is_stopped_with_one_line(monkeypatch):
  monkeypatch.setattr(vllm_process, "POLL_SECONDS", 0.05)
  engine, _pipe = client(SETTINGS)
  with pytest.raises(vllm_process.EngineProcessError,
                     match=r"^vLLM's engine process \(pid 4242\) gave no answer in 0.3 s \(rollout.vllm.timeout_s\)"):
    engine.receive()
  assert engine.process.terminated


def test_a_dead_engine_process_stops_the_run_before_any_timeout(monkeypatch):
  monkeypatch.setattr(vllm_process, "POLL_SECONDS", 0.05)
  engine, _pipe = client(vllm_engine.EngineSettings(**{**SETTINGS.__dict__, "timeout_s": 0.0}))  # 0: no limit
  engine.process.terminate()  # as if it had died
  with pytest.raises(vllm_process.EngineProcessError, match=r"died \(exit code None\); the last checkpoint is intact$"):
    engine.receive()
