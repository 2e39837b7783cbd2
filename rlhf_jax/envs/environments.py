"""Environments: what answers the policy's turns in a multi-turn trajectory.

The API (Tunix's and gym's, by the prompt record):
  reset(record) -> str | None      the text appended to the prompt (None: nothing)
  step(turn_text) -> Step          after each policy turn: the observation to append (tokenised
                                   once, no loss on it), a reward, and whether the trajectory ends
  reward() -> float                a final reward, summed with the reward functions' (TRL's
                                   optional get_reward; 0 if the environment has none)
The environment reads the turn's text only to parse it; the trajectory keeps the sampler's
tokens as they were sampled (token in, token out).

`ENVIRONMENTS` is the only place naming the built-ins; `env.tools` (TRL's `tools=[fn]`) and
`env.factory` (TRL's `environment_factory` class) bring a user's own, from their files:

  --config.env.tools="('my_tools.py:lookup', 'calculator')"
  --config.env.factory=my_env.py:IncrementEnv
"""

import concurrent.futures
import dataclasses
import inspect
from typing import Callable

from rlhf_jax import plugins, registry
from rlhf_jax.envs import calculator, sandbox, tools
from rlhf_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Step:
  observation: str  # "" ends nothing by itself; appended after the policy's turn
  reward: float = 0.0
  done: bool = False
  tool_call: bool = False  # the turn called a tool (counted in evaluation)
  tool_error: bool = False  # ... and it failed (an error observation, the penalty)


@dataclasses.dataclass(frozen=True)
class ToolLimits:
  seconds: float = 5.0  # per call
  output_chars: int = 512  # of a result, appended cut to this
  error_penalty: float = 0.0  # added to the trajectory's reward per failed call (e.g. -0.1)


def python(code: str) -> str:
  """Runs Python code in a sandbox and returns what it prints.

  Args:
    code: a Python program; print the values you need.

  Returns:
    Its output (stdout and stderr).
  """
  out = sandbox.run_python(code)
  if out.error:
    raise ToolError(out.error)
  return out.output


class ToolError(Exception):
  """A tool call that failed: the trajectory gets an error observation, never the run."""


BUILTIN_TOOLS = {"calculator": calculator.calculator, "python": python}


class ToolEnvironment:
  """Tools called in the tagged format: each turn that ends in a call gets the result (or an
  error) as its observation; a turn without a call ends the trajectory (its answer)."""

  def __init__(self, tool_fns: dict[str, Callable], limits: ToolLimits = ToolLimits(), instance=None,
               call_format=tools.TaggedFormat()):
    self.tools, self.limits, self.instance, self.format = dict(tool_fns), limits, instance, call_format
    self.penalty = 0.0

  def reset(self, record: dict) -> str | None:
    self.penalty = 0.0
    if self.instance is not None and hasattr(self.instance, "reset"):
      return self.instance.reset(**_accepted(self.instance.reset, record))
    return None

  def step(self, turn_text: str) -> Step:
    call = self.format.parse(turn_text)
    if call is None:
      return Step("", done=True)
    text, failed = self._call(call)
    if failed:
      self.penalty += self.limits.error_penalty
    return Step(self.format.observation(call, text[:self.limits.output_chars]), tool_call=True, tool_error=failed)

  def reward(self) -> float:
    extra = self.instance.get_reward() if self.instance is not None and hasattr(self.instance, "get_reward") else 0.0
    return float(extra) + self.penalty

  def _call(self, call: tools.Call) -> tuple[str, bool]:
    fn = self.tools.get(call.name)
    if fn is None:
      return f"error: no tool {call.name!r} (tools: {', '.join(self.tools)})", True
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
      return str(pool.submit(fn, *call.args, **call.kwargs).result(timeout=self.limits.seconds)), False
    except concurrent.futures.TimeoutError:
      return f"error: {call.name} took over {self.limits.seconds:g} s", True
    except Exception as e:  # the tool's error is the trajectory's, as TRL returns {"error": ...}
      return f"error: {type(e).__name__}: {e}"[:self.limits.output_chars], True
    finally:
      pool.shutdown(wait=False, cancel_futures=True)  # a hung call is left behind, not waited for


def _accepted(fn: Callable, record: dict) -> dict:
  """The record's fields `fn` takes (all of them if it takes **kwargs)."""
  params = inspect.signature(fn).parameters.values()
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
    return dict(record)
  return {p.name: record[p.name] for p in params if p.name in record}


ENVIRONMENTS: dict[str, Callable] = {
    # name -> (tools, limits) -> a factory of one environment per trajectory (the built-in tool
    # environment also takes the call format)
    "tools": lambda tool_fns, limits, call_format=tools.TaggedFormat(): (
        lambda: ToolEnvironment(tool_fns, limits, call_format=call_format)),
}


def register(name: str, factory: Callable) -> None:
  """Adds an environment: `factory(tool_fns, limits)` returns a no-argument constructor of one
  environment per trajectory (reset/step/reward, above)."""
  registry.add(ENVIRONMENTS, "environment", name, factory)


def from_factory_class(cls, limits: ToolLimits = ToolLimits(), call_format=tools.TaggedFormat()) -> Callable:
  """TRL's environment_factory convention: one instance per trajectory, its public methods the tools."""
  def make():
    instance = cls()
    return ToolEnvironment(tools.tools_of(instance), limits, instance=instance, call_format=call_format)
  return make


def load_object(spec: str, kind: str):
  """The object `NAME` of `PATH.py:NAME` or `module.sub:NAME`, a UserError naming `kind` otherwise."""
  where, _, name = spec.rpartition(":")
  if not where or not name:
    raise UserError(f"{kind} {spec!r}: a built-in name, PATH.py:NAME or module.sub:NAME")
  module = plugins.load_module(where, kind)
  found = getattr(module, name, None)
  if found is None:
    raise UserError(f"{kind} {spec!r}: {where} has no {name!r}")
  return found


def from_config(env_cfg, call_format=tools.TaggedFormat()) -> Callable | None:
  """A constructor of one environment per trajectory, from `config.env` (None: single-turn);
  the built-in tool environment and factory classes parse and answer calls in `call_format`."""
  limits = ToolLimits(env_cfg.tool_seconds, env_cfg.tool_output_chars, env_cfg.tool_error_penalty)
  if env_cfg.factory:
    return from_factory_class(factory_class(env_cfg), limits, call_format)
  if not env_cfg.tools and not env_cfg.name:
    return None
  name = env_cfg.name or "tools"
  if name not in ENVIRONMENTS:
    raise UserError(f"env.name={name!r}: choose one of {', '.join(ENVIRONMENTS)}")
  if name == "tools":
    return ENVIRONMENTS[name](tool_functions(env_cfg), limits, call_format=call_format)
  return ENVIRONMENTS[name](tool_functions(env_cfg), limits)


def factory_class(env_cfg) -> type:
  cls = load_object(env_cfg.factory, "env.factory")
  if not isinstance(cls, type):
    raise UserError(f"env.factory={env_cfg.factory!r} is not a class (TRL's environment_factory convention)")
  return cls


def tool_functions(env_cfg) -> dict[str, Callable]:
  """`env.tools` by name: built-ins, or PATH.py:NAME / module:NAME."""
  tool_fns = {}
  for spec in env_cfg.tools:
    fn = BUILTIN_TOOLS.get(spec) or load_object(spec, "env.tools entry")
    if not callable(fn):
      raise UserError(f"env.tools entry {spec!r} is not a function")
    tool_fns[getattr(fn, "__name__", spec)] = fn
  return tool_fns


def tool_schemas(env_cfg) -> list[dict]:
  """The JSON schemas of the tools `config.env` gives the policy (a factory class's public
  methods, on one instance), as a chat template lists them."""
  fns = tools.tools_of(factory_class(env_cfg)()) if env_cfg.factory else tool_functions(env_cfg)
  return [tools.json_schema(fn) for fn in fns.values()]


CALL_FORMATS = ("auto", "tagged", "chat_template")


def call_format(env_cfg, tokenizer, chat: bool):
  """`env.call_format`: `auto` takes the chat template's where the prompts are rendered by one
  (`chat`: data.chat_template), else the tagged format; checked against every tool now."""
  kind = env_cfg.get("call_format", "auto")
  if kind not in CALL_FORMATS:
    raise UserError(f"env.call_format={kind!r}: choose one of {', '.join(CALL_FORMATS)}")
  if kind == "tagged" or (kind == "auto" and not chat):
    return tools.TaggedFormat()
  if not hasattr(tokenizer, "render_messages"):
    raise UserError(f"env.call_format=chat_template needs a Hugging Face tokenizer with a chat template, "
                    f"not {tokenizer!r}")
  found = tools.ChatTemplateFormat(tokenizer.render_messages)
  for schema in tool_schemas(env_cfg):
    found.observation(tools.Call(schema["function"]["name"], (), {}), "")
  return found
