"""Runs a stage, the stages it starts from, or a whole pipeline.

A stage config may carry `upstream`: the configs of the stages it starts from. With
`init_from` empty, each upstream stage runs (or is reused when finished) under
WORKDIR/upstream/NAME, and the stage starts from the last one. A pipeline config runs its
`stages` in WORKDIR/NAME, each starting from the one before.
"""

import os

from absl import logging

from rlhf_jax.errors import UserError
from rlhf_jax.training import lm_trainer, ppo_trainer, reward_trainer
from rlhf_jax.workdir import RunDir

RUNNERS = {
    "pretrain": lm_trainer.run,
    "sft": lm_trainer.run,
    "reward": reward_trainer.run,
    "ppo": ppo_trainer.run,
}


def run(config, workdir: str) -> dict:
  if config.stage == "pipeline":
    return run_pipeline(config, workdir)
  return run_stage(config, workdir, upstream_root=os.path.join(workdir, "upstream"))


def run_stage(config, workdir: str, upstream_root: str) -> dict:
  if config.stage not in RUNNERS:
    raise UserError(f"config.stage={config.stage!r}: choose one of {sorted(RUNNERS)} or pipeline")
  upstream = config.get("upstream")
  if not config.init_from and upstream:
    for name in upstream:
      run_stage(upstream[name], os.path.join(upstream_root, name), upstream_root)
    fill_upstream_paths(config, upstream_root, default=list(upstream)[-1])
  logging.info("stage %s in %s", config.stage, workdir)
  return RUNNERS[config.stage](config, workdir)


def fill_upstream_paths(config, root: str, default) -> None:
  """Empty `*_from` fields point at finished stages under `root`: by `upstream_paths`
  (field -> stage, e.g. PPO's init_from -> sft, reward_from -> reward), else init_from ->
  `default`."""
  paths = dict(config.get("upstream_paths") or {"init_from": default})
  with config.unlocked():
    for field, stage in paths.items():
      if stage and not config[field]:
        config[field] = os.path.join(root, stage)


def run_pipeline(config, workdir: str) -> dict:
  summary, previous = {}, None
  for name in config.stages:
    if name not in config:
      raise UserError(f"pipeline stage {name!r} has no config section (config.{name})")
    if previous:
      fill_upstream_paths(config[name], workdir, default=previous)
    summary[name] = run_stage(config[name], os.path.join(workdir, name), upstream_root=workdir)
    previous = name
  RunDir(workdir).write_json("summary.json", summary)
  return summary
