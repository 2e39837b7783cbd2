"""Errors caused by the user's input: printed as one line by `main`, never a traceback."""


class UserError(Exception):
  """Bad input (config, data file, checkpoint): the message names the problem and the fix."""


class Preempted(Exception):
  """A preemption notice (SIGTERM) stopped the run after a checkpoint: `main` exits 0."""
