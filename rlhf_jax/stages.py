"""Runs a stage, the stages it starts from, or a whole pipeline.

A stage config may carry `upstream`: the configs of the stages it starts from. With
`init_from` empty, each upstream stage runs (or is reused when finished) under
WORKDIR/upstream/NAME, and the stage starts from the last one. A pipeline config runs its
`stages` in WORKDIR/NAME, each starting from the one before.
"""

import glob
import os

from absl import logging

from rlhf_jax import field_ranges, plugins, report, run_lock, stage_names, stage_specs
from rlhf_jax.errors import UserError
from rlhf_jax.models.continuous import BATCHINGS
from rlhf_jax.models.paged import PAGED_KERNELS
from rlhf_jax.stage_specs import STAGES
from rlhf_jax.training.core import guards, optim
from rlhf_jax.workdir import RunDir

PAIR_STAGES = stage_specs.with_trait("pairs")  # data.share_prompt: each preference pair's prompt held once
PACKED_STAGES = stage_specs.with_trait("packs")  # data.pack: several sequences per row (data/batches.py)


def run(config, workdir: str) -> dict:
  stage_names.normalise(config)
  plugins.load(plugins.of(config))  # before the checks: they look names up in the registries
  check_all(config)
  if config.stage == "pipeline":
    return run_pipeline(config, workdir)
  return run_stage(config, workdir, upstream_root=os.path.join(workdir, "upstream"))


def check_all(config) -> None:
  """Validates every stage this command would run, so a bad PPO field fails before pretraining."""
  pending = [config[n] for n in config.stages if n in config] if config.stage == "pipeline" else [config]
  while pending:
    stage_config = pending.pop()
    field_ranges.check_ranges(stage_config)
    check_train_fields(stage_config)
    if stage_config.stage in STAGES:
      STAGES[stage_config.stage].check_config(stage_config)
    pending.extend((stage_config.get("upstream") or {}).values())


def check_train_fields(config) -> None:
  train = config.get("train")
  if train and train.get("on_nonfinite", "stop") not in guards.ON_NONFINITE:
    raise UserError(f"train.on_nonfinite={train.on_nonfinite!r}: choose one of {guards.ON_NONFINITE}")
  batching = config.get("sample", {}).get("batching", "static")
  if batching not in BATCHINGS:
    raise UserError(f"sample.batching={batching!r}: choose one of {BATCHINGS}")
  kernel = config.get("sample", {}).get("paged_attention", "xla")
  if kernel not in PAGED_KERNELS:
    raise UserError(f"sample.paged_attention={kernel!r}: choose one of {PAGED_KERNELS}")
  for name in ("optim", "value_optim"):
    schedule = config.get(name, {}).get("schedule", "cosine")
    if schedule not in optim.SCHEDULES:
      raise UserError(f"{name}.schedule={schedule!r}: choose one of {optim.SCHEDULES}")
  if config.get("data", {}).get("pack") and config.stage not in PACKED_STAGES:
    raise UserError(f"data.pack=True: packed rows are for the {', '.join(PACKED_STAGES)} stages; "
                    f"the {config.stage} stage pads each row")
  if config.get("data", {}).get("share_prompt") and (config.stage not in PAIR_STAGES or not config.data.pack):
    raise UserError(f"data.share_prompt=True: a pair's prompt is shared within packed rows of the "
                    f"{' and '.join(PAIR_STAGES)} stages (data.pack=True); here stage={config.stage}, "
                    f"data.pack={config.data.get('pack')}")


def run_stage(config, workdir: str, upstream_root: str) -> dict:
  if config.stage not in STAGES:
    raise UserError(f"config.stage={config.stage!r}: choose one of {sorted(STAGES)} or pipeline")
  if RunDir(workdir).finished:
    logging.info("%s already finished; not redone", workdir)
    return RunDir(workdir).read_json("summary.json")
  upstream = needed_upstream(config)
  if not config.init_from and upstream:
    for name, stage_config in upstream.items():
      run_stage(stage_config, os.path.join(upstream_root, name), upstream_root)
    fill_upstream_paths(config, upstream_root, default=list(upstream)[-1], stages=stages_run(upstream))
  logging.info("stage %s in %s", config.stage, workdir)
  run_dir = RunDir(workdir)
  with run_lock.held(workdir):
    if run_dir.finished:  # by another process, since the check above
      return run_dir.read_json("summary.json")
    refuse_failed(run_dir, config)
    summary = STAGES[config.stage].run(config, workdir)
    run_dir.write_status("finished", summary.get("step"))
  draw_report([(os.path.basename(workdir.rstrip(os.sep)), config.stage, workdir)], workdir)
  return summary


def refuse_failed(run_dir: RunDir, config) -> None:
  """A run that failed (status.json) fails again with its cause, unless train.resume_failed
  resumes it from its last checkpoint (whose step may hold the refused update's batch)."""
  status = run_dir.status()
  if status.get("state") != "failed":
    return
  if not config.get("train", {}).get("resume_failed"):
    raise UserError(f"{run_dir.path} failed: {status['cause']} [--config.train.resume_failed=True resumes it "
                    "from that checkpoint]")
  logging.warning("%s failed (%s); resuming it from its last checkpoint", run_dir.path, status["cause"])


def draw_report(sections: list, workdir: str) -> str | None:
  """WORKDIR/report.png of (name, stage, run directory) sections; the run's results are saved
  before it, so a failure to draw is a warning."""
  try:
    path = report.write_report(sections, os.path.join(workdir, "report.png"))
  except (OSError, ValueError, RuntimeError) as e:
    logging.warning("report.png not written: %s", e)
    return None
  if path:
    logging.info("report: %s", path)
  return path


def needed_upstream(config) -> dict:
  """`config.upstream` without the stages it does not use, whose own upstream stages (which
  the stages after them may need) take their place."""
  unused = STAGES[config.stage].unused_upstream(config) if config.stage in STAGES else set()
  needed = {}
  for name, stage_config in (config.get("upstream") or {}).items():
    needed.update(needed_upstream(stage_config) if name in unused else {name: stage_config})
  return needed


def stages_run(upstream: dict) -> set:
  """The names of the stages `upstream` runs under one root: its own and, recursively, theirs
  (RL's SFT start is its reward stage's upstream)."""
  names = set(upstream)
  for stage_config in upstream.values():
    names |= stages_run(needed_upstream(stage_config))
  return names


def fill_upstream_paths(config, root: str, default, stages=None) -> None:
  """Empty `*_from` fields point at finished stages under `root`: by `upstream_paths`
  (field -> stage, e.g. PPO's init_from -> sft, reward_from -> reward), else init_from ->
  `default`; with `stages` given, only for the stages that ran. A `data.source` naming a stage
  without its path (SFT's "revise:") reads that stage's run under `root`."""
  paths = dict(config.get("upstream_paths") or {"init_from": default})
  with config.unlocked():
    for field, stage in paths.items():
      if stage and not config[field] and (stages is None or stage in stages):
        config[field] = os.path.join(root, stage)
    source = config.get("data", {}).get("source", "")
    if source.endswith(":") and source[:-1] in STAGES and (stages is None or source[:-1] in stages):
      config.data.source = source + os.path.join(root, source[:-1])


def run_pipeline(config, workdir: str) -> dict:
  with run_lock.held(workdir):
    return run_stages(config, workdir)


def run_stages(config, workdir: str) -> dict:
  summary, previous = {}, None
  for name in config.stages:
    if name not in config:
      raise UserError(f"pipeline stage {name!r} has no config section (config.{name})")
    if previous:
      fill_upstream_paths(config[name], workdir, default=previous)
    if config.get("log") and config.log.wandb_project and not config[name].log.wandb_project:
      config[name].log.update(config.log)  # the pipeline's W&B project for every stage
    summary[name] = run_stage(config[name], os.path.join(workdir, name), upstream_root=workdir)
    previous = name
  RunDir(workdir).write_json("summary.json", summary)
  picture = draw_report([(name, config[name].stage, os.path.join(workdir, name)) for name in summary], workdir)
  print(closing_table(summary, workdir, config, picture))
  return summary

def closing_table(summary: dict, workdir: str, config, picture: str | None = None) -> str:
  """The pipeline's closing table (by section, each with its stage's headline metrics), the
  last policy-vs-SFT section's gain and last samples beside the SFT policy's, and where the
  curves are drawn (`picture`, report.png)."""
  lines = [f"{'stage':<10}{'metric':<26}value"]
  compared = None
  for name, metrics in summary.items():
    stage = STAGES.get(config[name].stage)
    for key in stage.headlines if stage else ():
      if key in metrics:
        lines.append(f"{name:<10}{key:<26}{metrics[key]:.4g}")
    if stage and stage.compares_policy and "eval/kl" in metrics:
      compared = name
  if compared:
    metrics, section = summary[compared], config[compared]
    label = section.get("algo") or section.stage
    measure, by = ("gold_reward", "by the gold judge") if "eval/gold_reward" in metrics else ("accuracy", "in accuracy")
    if f"eval/{measure}" in metrics:
      gain = metrics[f"eval/{measure}"] - metrics[f"eval/ref_{measure}"]
      lines.append(f"{label.upper()} vs SFT {by}: {gain:+.3f} at KL {metrics['eval/kl']:.2f} nats")
    samples = sorted(glob.glob(os.path.join(workdir, compared, "samples", "step_*.txt")))
    if samples:
      with open(samples[-1]) as f:
        lines += ["", f"samples ({samples[-1]}):", f.read().strip()]
  if picture:
    lines += ["", f"curves of every stage: {picture}"]
  return "\n".join(lines)
