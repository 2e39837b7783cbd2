"""Entry point: python -m rlhf_jax.main --config=configs/STAGE.py:PRESET --workdir=DIR.

Any config field can be overridden: --config.optim.lr=3e-4. Running the same command with
the same workdir again resumes from the last checkpoint; a finished run is not redone.
Exit status: 0 when finished or preempted (SIGTERM: checkpointed, resumable), 2 for bad input.
The terminal gets the project's progress lines and every warning; `--verbosity=0` brings back
the libraries' INFO lines too.
"""

import logging as pylogging
import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from rlhf_jax import distributed, preemption, stage_names, stages
from rlhf_jax.errors import Preempted, UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/pretrain.py:tiny.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, samples and summaries.")
flags.mark_flags_as_required(["config", "workdir"])


PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def quiet_libraries() -> None:
  """Below WARNING, only the project's own lines reach the terminal: every library keeps its
  warnings and errors, but not its INFO chatter (Orbax logs each file it writes, JAX its
  backend search). (absl's logging.WARNING is its own scale; records carry Python's levels.)"""
  ours = lambda record: os.path.abspath(record.pathname).startswith(PACKAGE)
  logging.get_absl_handler().addFilter(lambda record: record.levelno >= pylogging.WARNING or ours(record))


def fail(message) -> None:
  """One line naming the problem, exit status 2, no traceback."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def last_line(error: Exception) -> str:
  """The line of a (possibly wrapped, multi-line) error message that names the problem."""
  lines = [l.strip(" '\"") for l in str(error).replace("\\n", "\n").splitlines() if l.strip(" '\"")]
  return lines[-1] if lines else type(error).__name__


def raised_in_config_file(error: Exception, argv) -> str | None:
  """FILE:LINE of the --config file's line that raised `error` (its get_config failed), or None."""
  path = next((a.split("=", 1)[1].split(":")[0] for a in argv if a.startswith("--config=")), None)
  lines = [line for frame, line in traceback.walk_tb(error.__traceback__)
           if path and os.path.abspath(frame.f_code.co_filename) == os.path.abspath(path)]
  return f"{path}:{lines[-1]}" if lines else None


def parse_flags(argv):
  """absl's parsing, but a bad override (--config.optim.lrr=1) is one line, not a traceback."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    where = raised_in_config_file(e, argv)
    if where:  # the config file's own bug, not an override's
      fail(f"cannot load --config: {where}: {type(e).__name__}: {last_line(e)}")
    for old, new in stage_names.RENAMED.items():
      if any(arg.startswith(f"--config.{old}.") for arg in argv):
        fail(f"a pipeline's {old} stage is now its {new} stage: write --config.{new}.FIELD for --config.{old}.FIELD")
    fail(f"unknown config field in the --config.* overrides: {last_line(e)}")
  except (flags.Error, TypeError, ValueError, OSError) as e:
    fail(f"bad command line: {last_line(e)}")


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:  # --verbosity=0 (INFO) shows every library's lines too
    logging.set_verbosity(logging.INFO)
    quiet_libraries()
  try:
    config = FLAGS.config
    config.get("stage")  # a config file that failed to load raises here
  except (OSError, AttributeError, ValueError) as e:
    fail(f"cannot load --config: {last_line(e)}")
  try:
    distributed.initialize(config.get("distributed"))
    preemption.listen()
    stages.run(config, FLAGS.workdir)
  except UserError as e:
    fail(e)
  except Preempted as e:
    print(e, flush=True)  # exit status 0: the scheduler may restart the same command


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
