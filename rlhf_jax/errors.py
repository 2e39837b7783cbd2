"""Errors caused by the user's input: printed as one line by `main`, never a traceback."""


class UserError(Exception):
  """Bad input (config, data file, checkpoint): the message names the problem and the fix."""
