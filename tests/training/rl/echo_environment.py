"""A plugin (config.plugins) for multi-turn tests: the `echo` environment, which answers every
turn, so that the tiny policy's trajectories have turns and observations whatever it writes
(0.05 a turn, and 0.1 a turn at the end), and `short`, a reward function for the embedded
corpus's prompts, which have no answer column."""

from rlhf_jax.envs import environments

OBSERVATION = " <result>noted</result>"


class Echo:

  def __init__(self, tool_fns, limits):
    del tool_fns, limits
    self.turns = 0

  def reset(self, record):
    del record
    self.turns = 0
    return None

  def step(self, turn_text):
    del turn_text
    self.turns += 1
    return environments.Step(OBSERVATION, reward=0.05, tool_call=True, tool_error=self.turns == 2)

  def reward(self):
    return 0.1 * self.turns


def short(prompts, completions, **unused):
  """Fewer words score higher."""
  del prompts, unused
  return [-len(c.split()) / 10 for c in completions]


if "echo" not in environments.ENVIRONMENTS:
  environments.register("echo", lambda tool_fns, limits: (lambda: Echo(tool_fns, limits)))
