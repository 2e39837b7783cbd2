"""Host-side metric logging: metrics.jsonl, TensorBoard (tensorboardX), optionally Weights &
Biases (rlhf_jax/tracking.py), and progress.

tensorboardX writes event files without TensorFlow, and `purge_step` drops events past the
resumed step, so a resumed run's curves are not doubled. Only process 0 writes.
"""

import json
import os
import sys
import time

from absl import logging
import jax
import numpy as np
import tqdm

from rlhf_jax import tracking


def _summary_writer():
  """tensorboardX's SummaryWriter class, imported without torch: tensorboardX imports torch, if
  installed, only to accept torch tensors, which nothing here logs, and that import took every
  process ~2.4 s of its start (the interop extras install torch). Torch is importable again
  afterwards."""
  blocked = "torch" not in sys.modules
  if blocked:
    sys.modules["torch"] = None  # `import torch` raises ImportError: tensorboardX's optional path
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    if blocked:
      del sys.modules["torch"]
  return SummaryWriter


SummaryWriter = _summary_writer()


def _plain(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


class MetricsLog:

  def __init__(self, run_dir, start_step: int, num_steps: int):
    self.enabled = jax.process_index() == 0
    self.path = run_dir.file("metrics.jsonl")
    self.start_step, self.num_steps = start_step, num_steps
    self.start_time = time.time()
    if not self.enabled:
      return
    os.makedirs(run_dir.path, exist_ok=True)
    _truncate_after(self.path, start_step)
    self.tb = SummaryWriter(run_dir.file("tb"), purge_step=start_step + 1)
    self.wandb = tracking.open_wandb(run_dir)
    # tqdm draws only on a terminal; logs always get the same figures in `write`.
    self.bar = tqdm.tqdm(total=num_steps, initial=start_step, disable=not sys.stderr.isatty(),
                         dynamic_ncols=True, unit="step")

  def write(self, step: int, metrics: dict) -> None:
    """One JSON line with a `step` field, the same scalars to TensorBoard, and a log line."""
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    for key, value in row.items():
      if key != "step" and isinstance(value, (int, float)):
        self.tb.add_scalar(key, value, step)
    if self.wandb:
      self.wandb.write(step, row)
    logging.info("step %d/%d %s%s", step, self.num_steps, _short(row), self._speed(step))

  def last(self, key: str):
    """`key`'s value in the last row kept (rows past the resumed step are dropped), or None."""
    if not os.path.isfile(self.path):
      return None
    with open(self.path) as f:
      values = [row[key] for row in map(json.loads, f) if key in row]
    return values[-1] if values else None

  def text(self, step: int, tag: str, text: str) -> None:
    if self.enabled:
      self.tb.add_text(tag, text, step)

  def advance(self, step: int, loss=None) -> None:
    if self.enabled:
      self.bar.update(step - self.bar.n)
      if loss is not None:
        self.bar.set_postfix(loss=f"{loss:.3f}")

  def _speed(self, step: int) -> str:
    done = step - self.start_step
    elapsed = time.time() - self.start_time
    if done <= 0 or elapsed <= 0:
      return ""
    rate = done / elapsed
    return f" | {rate:.2f} steps/s, ETA {(self.num_steps - step) / rate:.0f}s"

  def close(self) -> None:
    if self.enabled:
      self.bar.close()
      self.tb.close()
      if self.wandb:
        self.wandb.close()


def _short(row: dict) -> str:
  return " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step" and isinstance(v, float))


def _step_of(line: str):
  """The step of a logged line; None for a line a kill cut short."""
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError, TypeError):
    return None


def _truncate_after(path: str, step: int) -> None:
  """Drops lines logged after `step` (by a run that died before its next checkpoint), and a
  last line cut short by a kill. Rewritten through a renamed temporary file, so a kill now
  loses nothing."""
  if not os.path.isfile(path):
    return
  with open(path) as f:
    lines = [line if line.endswith("\n") else line + "\n" for line in f if line.strip()]
  kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
  with open(path + ".tmp", "w") as f:
    f.writelines(kept)
  os.replace(path + ".tmp", path)
