"""Environments and tools: TRL's conventions accepted unchanged, calls parsed from the tagged
format, and a tool's failure is the trajectory's observation, never the run's exception."""

import inspect
import time

import ml_collections
import pytest

from rlhf_jax.envs import environments, tools
from rlhf_jax.envs.calculator import calculator
from rlhf_jax.errors import UserError


def lookup(word: str) -> str:
  """Looks a word up.

  Args:
    word: the word.
  """
  return {"pi": "3.14159"}.get(word, "unknown")


class IncrementEnv:  # TRL's demo environment, as written for TRL
  def __init__(self):
    self._counter = 0

  def reset(self, start: int = 0) -> str:
    self._counter = start
    return f"The counter is {start}."

  def increment(self, a: int) -> int:
    """Increment the integer by a specified value

    Args:
      a: The value to increment by

    Returns:
      The incremented integer.
    """
    self._counter += a
    return self._counter

  def get_reward(self) -> float:
    return float(self._counter == 10)


def test_calls_are_parsed_never_evaluated():
  assert tools.parse_call("so <call>calculator('12 * 34')</call>") == tools.Call("calculator", ("12 * 34",), {})
  assert tools.parse_call(tools.format_call("lookup", word="pi")) == tools.Call("lookup", (), {"word": "pi"})
  for text in ("no call", "<call>calculator(</call>", "<call>__import__('os').system('ls')</call>",
               "<call>f(open('x'))</call>", "<call>x.y(1)</call>"):
    assert tools.parse_call(text) is None, text
  assert calculator("(12 + 7) * 3") == "57" and calculator("7 / 2") == "3.5"


def test_a_trl_environment_class_runs_unchanged():
  env = environments.from_factory_class(IncrementEnv)()
  assert env.reset({"start": 7, "question": "ignored"}) == "The counter is 7."
  step = env.step("I add three: " + tools.format_call("increment", a=3))
  assert step == environments.Step("<result>10</result>", tool_call=True)
  assert env.step("Done: 10.").done and env.reward() == 1.0
  assert "increment(a: int): Increment the integer" in tools.describe(tools.tools_of(IncrementEnv()))


def test_a_failing_hanging_or_unknown_tool_costs_only_its_call():
  def slow(x: int) -> int:
    """Sleeps."""
    time.sleep(5)
    return x

  limits = environments.ToolLimits(seconds=0.5, error_penalty=-0.1)
  env = environments.ToolEnvironment({"calculator": calculator, "lookup": lookup, "slow": slow}, limits)
  env.reset({})
  results = [env.step(tools.format_call(*call)) for call in (("calculator", "1 / 0"), ("slow", 1), ("search", "x"),
                                                              ("lookup", "pi"))]
  assert [r.tool_error for r in results] == [True, True, True, False]
  assert "ZeroDivisionError" in results[0].observation and "over 0.5 s" in results[1].observation
  assert "no tool 'search'" in results[2].observation and results[3].observation == "<result>3.14159</result>"
  assert abs(env.reward() - -0.3) < 1e-9


def test_the_python_tool_runs_sandboxed():
  env = environments.ToolEnvironment({"python": environments.python})
  env.reset({})
  assert env.step(tools.format_call("python", "print(sum(range(10)))")).observation == "<result>45\n</result>"
  refused = env.step(tools.format_call("python", "import os; os.system('ls')"))
  assert refused.tool_error and "not allowed" in refused.observation


def test_a_users_tools_and_environment_class_load_from_their_files(tmp_path):
  (tmp_path / "my_env.py").write_text(inspect.getsource(IncrementEnv))
  (tmp_path / "my_tools.py").write_text(inspect.getsource(lookup))
  env_cfg = ml_collections.ConfigDict(dict(name="", tools=(), factory=f"{tmp_path / 'my_env.py'}:IncrementEnv",
                                           tool_seconds=1.0, tool_output_chars=64, tool_error_penalty=0.0))
  env = environments.from_config(env_cfg)()
  env.reset({"start": 9})
  assert env.step(tools.format_call("increment", 1)).observation == "<result>10</result>" and env.reward() == 1.0
  env_cfg.update(factory="", tools=(f"{tmp_path / 'my_tools.py'}:lookup", "calculator"))
  env = environments.from_config(env_cfg)()
  assert sorted(env.tools) == ["calculator", "lookup"]
  for bad, message in ((f"{tmp_path / 'my_tools.py'}:search", "has no 'search'"),
                       (f"{tmp_path / 'none.py'}:lookup", "none.py not found"), ("search", "PATH.py:NAME")):
    env_cfg.tools = (bad,)
    with pytest.raises(UserError, match=message):
      environments.from_config(env_cfg)
