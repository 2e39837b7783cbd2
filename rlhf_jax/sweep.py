"""Runs a sweep defined in Python: a shared upstream run, then a grid of runs, each in its own
work directory, on this machine (one at a time or N in parallel) or as commands for a cluster.

  python -m rlhf_jax.sweep --sweep=experiments/showcase.py --root=runs/showcase --parallel=2
  python -m rlhf_jax.sweep --sweep=experiments/showcase.py --root=runs/showcase --emit_commands

A sweep file defines `get_sweep() -> Sweep`. Each run is `python -m rlhf_jax.main` in a child
process, so a crash is that run's alone: it is reported and the others go on. A finished run
(summary.json present) is skipped; an interrupted one resumes from its last checkpoint, as any
rerun of `main` does. Overrides may name the upstream's directory as "{upstream}".
"""

import concurrent.futures
import dataclasses
import importlib.util
import itertools
import os
import shlex
import subprocess
import sys
import time

from absl import app
from absl import flags

@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  config: str  # configs/FILE.py:PRESET
  overrides: dict = dataclasses.field(default_factory=dict)  # field -> value: --config.field=value


@dataclasses.dataclass(frozen=True)
class Sweep:
  runs: tuple
  upstream: Run | None = None  # run first; its work directory is "{upstream}" in overrides


def grid(name: str, config: str, base: dict | None = None, **axes) -> list:
  """Runs for every combination of `axes` (field -> values); `name` is formatted with the
  field values by their last component, e.g. grid("{algo}_s{seed}", ..., algo=[...], seed=[0, 1])."""
  runs = []
  for values in itertools.product(*axes.values()):
    fields = dict(zip(axes, values))
    short = {field.rsplit(".", 1)[-1]: value for field, value in fields.items()}
    runs.append(Run(name.format(**short), config, {**(base or {}), **fields}))
  return runs


def load_sweep(path: str) -> Sweep:
  spec = importlib.util.spec_from_file_location("sweep_definition", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_sweep()


def command(run: Run, root: str, upstream_dir: str) -> list:
  """The `main` command line of `run` in root/NAME."""
  def flag(field, value):
    value = value.format(upstream=upstream_dir) if isinstance(value, str) else value
    # ml-collections reads a tuple field from a Python literal: ('pretrain', 'sft').
    text = repr(tuple(value)) if isinstance(value, (tuple, list)) else str(value)
    return f"--config.{field}={text}"
  workdir = os.path.join(root, run.name)
  return [sys.executable, "-m", "rlhf_jax.main", f"--config={run.config}", f"--workdir={workdir}",
          *(flag(k, v) for k, v in run.overrides.items())]


def execute(run: Run, root: str, upstream_dir: str) -> tuple:
  """(name, status, seconds); the run's output goes to root/logs/NAME.log."""
  if os.path.exists(os.path.join(root, run.name, "summary.json")):
    return run.name, "skipped (finished)", 0.0
  os.makedirs(os.path.join(root, "logs"), exist_ok=True)
  started = time.time()
  with open(os.path.join(root, "logs", f"{run.name}.log"), "ab") as log:
    code = subprocess.call(command(run, root, upstream_dir), stdout=log, stderr=subprocess.STDOUT)
  if code == 0 and not os.path.exists(os.path.join(root, run.name, "summary.json")):
    status = "preempted (checkpointed; run the sweep again to resume)"  # main exits 0 on SIGTERM
  else:
    status = "ok" if code == 0 else f"failed (exit {code}, see logs/{run.name}.log)"
  return run.name, status, time.time() - started


def run_sweep(sweep: Sweep, root: str, parallel: int = 1, only: str = "") -> list:
  """Runs the upstream, then every run; returns [(name, status, seconds)] in sweep order."""
  upstream_dir = os.path.join(root, sweep.upstream.name) if sweep.upstream else ""
  results = []
  if sweep.upstream:
    results.append(execute(sweep.upstream, root, upstream_dir))
    print(f"{results[-1][0]}: {results[-1][1]}", flush=True)
    if not results[-1][1].startswith(("ok", "skipped")):
      return results  # every run starts from it
  runs = [r for r in sweep.runs if only in r.name]
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(parallel, 1)) as pool:
    futures = [pool.submit(execute, r, root, upstream_dir) for r in runs]
    for future in concurrent.futures.as_completed(futures):
      name, status, seconds = future.result()
      print(f"{name}: {status} ({seconds:.0f} s)", flush=True)
  results += [f.result() for f in futures]
  return results


def define_flags() -> None:
  """Flags of the command (defined only when run as one, so importing this module defines none)."""
  flags.DEFINE_string("sweep", None, "a Python file defining get_sweep()", required=True)
  flags.DEFINE_string("root", None, "the sweep's directory: one work directory per run", required=True)
  flags.DEFINE_integer("parallel", 1, "runs at once on this machine")
  flags.DEFINE_string("only", "", "run only the runs whose name contains this")
  flags.DEFINE_bool("emit_commands", False, "print each run's command (upstream first) and exit")


def main(argv):
  del argv
  args = flags.FLAGS
  sweep = load_sweep(args.sweep)
  root = args.root
  if args.emit_commands:
    upstream_dir = os.path.join(root, sweep.upstream.name) if sweep.upstream else ""
    for run in ([sweep.upstream] if sweep.upstream else []) + [r for r in sweep.runs if args.only in r.name]:
      print(shlex.join(command(run, root, upstream_dir)))
    return 0
  results = run_sweep(sweep, root, args.parallel, args.only)
  failed, preempted = ([name for name, status, _ in results if status.startswith(word)]
                       for word in ("failed", "preempted"))
  print(f"{len(results) - len(failed) - len(preempted)} of {len(results)} runs ok"
        + (f"; preempted: {', '.join(preempted)}" if preempted else "")
        + (f"; failed: {', '.join(failed)}" if failed else ""))
  return 1 if failed else 0


if __name__ == "__main__":
  define_flags()
  app.run(main)
