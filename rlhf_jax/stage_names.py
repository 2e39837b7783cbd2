"""The stages' names, and the earlier names that still work.

The RL stage runs every algorithm (PPO, the REINFORCE family, the variants), so it is `rl`;
configs, run directories and sweeps made when it was `ppo` keep working.
"""

RENAMED = {"ppo": "rl"}


def canonical(stage: str) -> str:
  """The stage's current name (`ppo` -> `rl`)."""
  return RENAMED.get(stage, stage)


def normalise(config) -> None:
  """Rewrites earlier stage names in `config` and in every config it would run (a pipeline's
  stages, each stage's upstream) to the current ones, so the rest of the code sees only those.
  A pipeline's `stages` entry keeps naming its own section where there is one (an earlier
  config's `ppo` section stays WORKDIR/ppo)."""
  if config.get("stage") == "pipeline":
    config.stages = tuple(n if n in config else canonical(n) for n in config.stages)
    pending = [config[n] for n in config.stages if n in config]
  else:
    pending = [config]
  while pending:
    stage_config = pending.pop()
    stage_config.stage = canonical(stage_config.stage)
    pending.extend((stage_config.get("upstream") or {}).values())
