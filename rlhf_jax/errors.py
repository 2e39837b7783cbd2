"""Errors caused by the user's input: printed as one line by `main`, never a traceback."""


class UserError(Exception):
  """Bad input (config, data file, checkpoint): the message names the problem and the fix."""


class HostStepError(UserError):
  """Bad input that host work inside a step found (a reward function that raised or returned
  the wrong thing): the loop checkpoints the last finished step, then stops with it."""


class RunFailed(UserError):
  """A run stopped for good once training had begun (a refused non-finite update, a reward
  function that raised): `status.json` records it, and rerunning the run repeats the error
  unless `train.resume_failed` asks to resume from its last checkpoint."""


class Preempted(Exception):
  """A preemption notice (SIGTERM) stopped the run after a checkpoint: `main` exits 0."""
