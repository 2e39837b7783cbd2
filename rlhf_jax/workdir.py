"""The files of a run directory, in one place.

  config.json      the resolved config          metrics.jsonl  one JSON object per logged step
  tb/              TensorBoard event files      checkpoints/   orbax checkpoints
  tokenizer/       the tokenizer, saved         samples/       sampled texts (and RL/DPO .jsonl) at eval
  summary.json     final eval metrics; its presence marks the run finished
  status.json      running, finished, or failed with its cause (a rerun of a failed run repeats it)
  report.png       each stage's curves, drawn at the end (rlhf_jax/report.py)
  run.lock         held by the one process running it (rlhf_jax/run_lock.py); empty when none
"""

import json
import os

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections

from rlhf_jax.errors import UserError


class RunDir:

  def __init__(self, path: str):
    self.path = os.path.abspath(path)

  def file(self, *parts) -> str:
    return os.path.join(self.path, *parts)

  @property
  def finished(self) -> bool:
    return os.path.isfile(self.file("summary.json"))

  def read_json(self, name: str) -> dict:
    path = self.file(name)
    if not os.path.isfile(path):
      raise UserError(f"{path} not found: is {self.path} a finished run directory?")
    with open(path) as f:
      return json.load(f)

  def write_json(self, name: str, value: dict) -> None:
    self.write_text(name, json.dumps(value, indent=2, sort_keys=True))

  def write_text(self, name: str, text: str) -> None:
    """Written by process 0 to a temporary file and renamed, so a kill never leaves half a
    file. Every process calls it and waits for the write, so none reads a file (a finished
    stage's summary, a tokenizer saved just before) that process 0 has not written yet."""
    if jax.process_index() == 0:
      os.makedirs(self.path, exist_ok=True)
      tmp = self.file(name + ".tmp")
      with open(tmp, "w") as f:
        f.write(text)
      os.replace(tmp, self.file(name))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(self.file(name))

  def status(self) -> dict:
    """status.json: {"state": running | finished | failed, "step", "cause"}; {} before any."""
    return self.read_json("status.json") if os.path.isfile(self.file("status.json")) else {}

  def write_status(self, state: str, step: int | None = None, cause: str = "") -> None:
    self.write_json("status.json", {"state": state, "step": step, "cause": cause})

  def write_samples(self, step: int, lines: list, suffix: str = "txt") -> None:
    """samples/step_N.SUFFIX, one sample per line (by process 0; nothing waits for it)."""
    if jax.process_index() == 0:
      os.makedirs(self.file("samples"), exist_ok=True)
      with open(self.file("samples", f"step_{step:06d}.{suffix}"), "w") as f:
        f.write("\n".join(lines) + "\n")

  def record_config(self, config: ml_collections.ConfigDict) -> None:
    """Writes config.json; on a resume, warns about fields that changed since the first start."""
    new = json.loads(config.to_json_best_effort())
    if os.path.isfile(self.file("config.json")):
      old = self.read_json("config.json")
      for field in LEGACY_UNSET:  # the same setting, written as it was before None meant unset
        section, _, name = field.partition(".")
        if old.get(section, {}).get(name) in (0, "") and new.get(section, {}).get(name, 1) is None:
          old[section][name] = None
      changed = sorted(_diff(old, new))
      # A field the run's config lacked is one a later version of the code added: not refused.
      refused = [field for field in changed if changes_the_run(field) and _has(old, field)]
      if refused:
        raise UserError(f"{self.path} was started with other values of {', '.join(refused)}: resuming would "
                        "continue another run's checkpoint as this one; use a new workdir")
      if changed:
        logging.warning("resuming %s with changed config fields: %s", self.path, ", ".join(changed))
    self.write_json("config.json", new)


# Fields whose change makes a resumed run another experiment (the method, the model, the data,
# where it starts): refused. Others (logging, evaluation, steps, learning rate, mesh, compute
# settings) are allowed with a warning: lowering optim.lr is the advice of a non-finite stop.
RUN_DEFINING = ("algo", "critic", "seed", "init_from", "reward_from", "model.", "tokenizer.", "data.",
                "lora.", "reward.fns", "reward.weights", "rl.advantage", "rl.policy_loss", "rl.loss_aggregation",
                "rl.samples_per_prompt", "rl.off_policy_steps", "preference.", "revise.")
# What runs before None meant "unset" wrote as "" or 0 (the algorithm's preset).
LEGACY_UNSET = ("rl.advantage", "rl.policy_loss", "rl.loss_aggregation", "rl.loss_reduction",
                "rl.samples_per_prompt", "rl.epochs", "rl.minibatches")
COMPUTE_SETTINGS = ("model.dtype", "model.remat", "model.attention", "model.logits_chunk", "data.tfds_data_dir")


def changes_the_run(field: str) -> bool:
  return field.startswith(RUN_DEFINING) and not field.startswith(COMPUTE_SETTINGS)


def _has(tree: dict, field: str) -> bool:
  for name in field.split("."):
    if not isinstance(tree, dict) or name not in tree:
      return False
    tree = tree[name]
  return True


def _diff(old, new, prefix=""):
  if isinstance(old, dict) and isinstance(new, dict):
    for key in set(old) | set(new):
      yield from _diff(old.get(key), new.get(key), f"{prefix}{key}.")
  elif old != new:
    yield prefix.rstrip(".")

