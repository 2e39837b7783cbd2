"""The host loop shared by every stage: step, log, evaluate, checkpoint, summarise.

It only moves batches in and metrics out; everything numeric happens in the compiled step.
Batches are a pure function of the step, so a resumed run replays exactly the batches it
would have seen.
"""

import dataclasses
import time
from typing import Callable

import jax

from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.metrics_log import MetricsLog
from rlhf_jax.training import setup
from rlhf_jax.workdir import RunDir


@dataclasses.dataclass
class Loop:
  train_cfg: object  # config.train: num_steps, log_every, eval_every, checkpoint_every
  run_dir: RunDir
  train_step: Callable  # (state, device batch) -> (state, metrics)
  batch: Callable  # step -> device batch
  evaluate: Callable  # (state, step) -> metrics (host floats)
  checkpointer: Checkpointer
  items: tuple = setup.STATE_ITEMS  # the state fields a checkpoint holds
  open_log: Callable = MetricsLog  # (run_dir, start_step, num_steps) -> a MetricsLog-like writer

  def train(self, state) -> dict:
    """Trains to train_cfg.num_steps; returns the final eval metrics."""
    t = self.train_cfg
    start = int(jax.device_get(state.step))
    log = self.open_log(self.run_dir, start, t.num_steps)
    started = time.time()
    eval_metrics = {}
    try:
      for step in range(start + 1, t.num_steps + 1):
        state, metrics = self.train_step(state, self.batch(step - 1))
        last = step == t.num_steps
        if step % t.log_every == 0 or last:
          log.write(step, jax.device_get(metrics))
        if step % t.eval_every == 0 or last:
          eval_metrics = self._evaluate(state, step, log)
        if step % t.checkpoint_every == 0 or last:
          self.checkpointer.save(step, {n: getattr(state, n) for n in self.items},
                                 {"step": step, "data_position": step})
        log.advance(step)
      if start == t.num_steps:  # killed after the last checkpoint but before the summary
        eval_metrics = self._evaluate(state, start, log)
    finally:
      self.checkpointer.wait()
      log.close()
    return {**eval_metrics, "step": t.num_steps, "train_seconds_this_session": time.time() - started}

  def _evaluate(self, state, step: int, log) -> dict:
    metrics = self.evaluate(state, step)
    texts = metrics.pop("samples", None)
    if texts:
      log.text(step, "samples", texts)
    log.write(step, metrics)
    return metrics
