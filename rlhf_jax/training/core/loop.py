"""The host loop shared by every stage: step, log, evaluate, checkpoint, summarise.

It only moves batches in and metrics out; everything numeric happens in the compiled step.
Batches are a pure function of the step, so a resumed run replays exactly the batches it
would have seen. Two things stop a run early, each after writing a checkpoint: a preemption
notice (SIGTERM; `Preempted`, exit 0) and, with train.on_nonfinite="stop", an update the
compiled step refused because its loss, gradients or rewards were not finite (`RunFailed`,
raised one step later: a step's flags are read once the next one is queued). Bad input that
host work inside a step or an evaluation finds (`HostStepError`: a reward function that
raised) stops it too, after checkpointing the last finished step. Either is a `RunFailed`:
the run directory's status.json says "failed" and why, and a rerun repeats it (stages.py).
"""

import dataclasses
import time
from typing import Callable

import jax
import numpy as np

from rlhf_jax import preemption
from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.errors import HostStepError, Preempted, RunFailed
from rlhf_jax.metrics_log import MetricsLog
from rlhf_jax.training.core import setup
from rlhf_jax.training.core.compute import ComputeClock, StepCost
from rlhf_jax.workdir import RunDir


@dataclasses.dataclass
class Loop:
  train_cfg: object  # config.train: num_steps, log_every, eval_every, checkpoint_every, on_nonfinite
  run_dir: RunDir
  train_step: Callable  # (state, device batch) -> (state, metrics)
  batch: Callable  # step -> device batch
  evaluate: Callable  # (state, step) -> metrics (host floats)
  checkpointer: Checkpointer
  items: tuple = setup.STATE_ITEMS  # the state fields a checkpoint holds
  open_log: Callable = MetricsLog  # (run_dir, start_step, num_steps) -> a MetricsLog-like writer
  cost: StepCost = StepCost(0.0)  # one step's compute: logged cumulatively (training/core/compute.py)

  def train(self, state) -> dict:
    """Trains to train_cfg.num_steps; returns the final eval metrics."""
    t = self.train_cfg
    start = int(jax.device_get(state.step))
    log = self.open_log(self.run_dir, start, t.num_steps)
    self.clock = ComputeClock(self.cost, log.last("compute/seconds") or 0.0)
    started = time.time()
    eval_metrics = {}
    previous = None  # (step, metrics) of the step before this one
    saved_at = start or None  # the newest step checkpointed (the one resumed from)
    self.run_dir.write_status("running", start)
    try:
      for step in range(start + 1, t.num_steps + 1):
        state, metrics = self._step(state, step, saved_at == step - 1)
        # The step before's flags, read now that this step is queued: the host waits for that
        # step (done or nearly), never for this one.
        self._stop_if_nonfinite(previous, state, step, False, log)
        previous, last = (step, metrics), step == t.num_steps
        if step % t.log_every == 0 or last:
          log.write(step, {**jax.device_get(metrics), **self.clock.at(step)})
        if step % t.eval_every == 0 or last:
          eval_metrics = self._evaluate(state, step, log)
        saved = step % t.checkpoint_every == 0 or last
        if saved:
          self._save(state, step)
          saved_at = step
        if preemption.reached(step) and not last:  # every process asks at every step
          raise Preempted(f"preempted after step {step}: {self._checkpoint(state, step, saved)}; "
                          "run the same command to resume")
        log.advance(step)
      self._stop_if_nonfinite(previous, state, t.num_steps, True, log)
      if start == t.num_steps:  # killed after the last checkpoint but before the summary: the
        eval_metrics = self._evaluate(state, start, None, saved=True)  # eval was logged before the checkpoint
    except RunFailed as e:  # its checkpoint is already written (`_checkpoint` waits for it)
      self.run_dir.write_status("failed", cause=str(e))
      raise
    finally:
      self.checkpointer.wait()
      log.close()
    return {**eval_metrics, "step": t.num_steps, "train_seconds_this_session": time.time() - started}

  def _step(self, state, step: int, saved: bool):
    """The train step of `step`; a HostStepError stops the run after checkpointing `state`,
    the step before (untouched: host work fails before the update that would donate it)."""
    try:
      return self.train_step(state, self.batch(step - 1))
    except HostStepError as e:
      raise RunFailed(f"step {step}: {e} ({self._checkpoint(state, step - 1, saved)})") from None

  def _save(self, state, step: int) -> None:
    self.checkpointer.save(step, {n: getattr(state, n) for n in self.items}, {"step": step, "data_position": step})

  def _checkpoint(self, state, step: int, saved: bool) -> str:
    """Makes sure `state` is checkpointed (written, not just queued) at `step`; says where."""
    if not saved:
      self._save(state, step)
    self.checkpointer.wait()
    return f"checkpoint of step {step} in {self.checkpointer.directory}"

  def _stop_if_nonfinite(self, previous, state, step: int, saved: bool, log) -> None:
    """With train.on_nonfinite="stop": raises if the step in `previous` refused its update,
    after logging it and checkpointing `state` (at `step`, which that refusal left unharmed)."""
    if previous is None or self.train_cfg.on_nonfinite != "stop":
      return
    bad_step, metrics = previous
    flags = jax.device_get({k: v for k, v in metrics.items() if k.startswith("nonfinite_")})
    bad = sorted(k[len("nonfinite_"):] for k, v in flags.items() if np.any(v))
    if not bad:
      return
    if bad_step % self.train_cfg.log_every and bad_step != self.train_cfg.num_steps:
      log.write(bad_step, {**jax.device_get(metrics), **self.clock.at(bad_step)})
    advice = ("a reward was NaN or inf: check the reward model and functions (reward/NAME says which)"
              if "rewards" in bad else "Lower optim.lr")
    raise RunFailed(f"step {bad_step}: non-finite {' and '.join(bad)}; that update was not applied "
                    f"({self._checkpoint(state, step, saved)}). {advice}, or set train.on_nonfinite=skip to go on")

  def _evaluate(self, state, step: int, log, saved: bool = False) -> dict:
    started = time.time()
    try:
      metrics = self.evaluate(state, step)
    except HostStepError as e:
      raise RunFailed(f"evaluation at step {step}: {e} ({self._checkpoint(state, step, saved)})") from None
    self.clock.pause(time.time() - started)
    texts = metrics.pop("samples", None)
    if log is not None:
      if texts:
        log.text(step, "samples", texts)
      log.write(step, {**metrics, **self.clock.at(step)})
    return metrics
