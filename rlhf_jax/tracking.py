"""Weights & Biases logging beside TensorBoard, when the run's config names `log.wandb_project`.

A run is named by its directory and grouped by its parent directory's name, so a sweep's runs
(ROOT/NAME) fall in the sweep's group and a pipeline's stages (WORKDIR/STAGE) in the
pipeline's. Its W&B id is derived from the directory's path, so a resumed run goes on in the
same W&B run (rows W&B has already seen, those between the checkpoint and the kill, it
ignores). Only process 0 logs, as for the other logs. wandb is optional: pip install -e '.[wandb]'.
"""

import hashlib
import os

from rlhf_jax.errors import UserError


class WandbLog:
  """The scalars of every metrics row, logged to a W&B run at their step."""

  def __init__(self, run_dir, config: dict):
    try:
      import wandb  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise UserError("log.wandb_project needs wandb: pip install -e '.[wandb]'") from None
    log = config["log"]
    path = os.path.abspath(run_dir.path)
    self.run = wandb.init(
        project=log["wandb_project"], entity=log.get("wandb_entity") or None, mode=log.get("wandb_mode") or None,
        name=os.path.basename(path), group=os.path.basename(os.path.dirname(path)), config=config,
        id=hashlib.sha1(path.encode()).hexdigest()[:16], resume="allow", dir=path,
        settings=wandb.Settings(console="off", silent=True))

  def write(self, step: int, row: dict) -> None:
    self.run.log({k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}, step=step)

  def close(self) -> None:
    self.run.finish()


def open_wandb(run_dir):
  """A WandbLog if the run's recorded config names a W&B project, else None."""
  config = run_dir.read_json("config.json") if os.path.isfile(run_dir.file("config.json")) else {}
  return WandbLog(run_dir, config) if (config.get("log") or {}).get("wandb_project") else None
