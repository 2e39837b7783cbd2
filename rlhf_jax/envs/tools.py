"""Tools and their calls: TRL's convention for tools, and the tagged call format of the
embedded tokenizers.

A tool is a typed Python function with a Google-style docstring (TRL's `tools=[fn]`); an
environment class in TRL's `environment_factory` convention has one instance per trajectory,
`reset(**record) -> str | None` and public methods that are its tools. Both are accepted as
users write them for TRL.

The embedded tokenizers (byte, SentencePiece) have no chat template, so a call is written as
`<call>name(arg, key=value)</call>`: the arguments are Python literals, parsed with `ast` (never
evaluated), and the tool's result is appended as `<result>text</result>`. A malformed call is
plain text, as in TRL: the turn ends the trajectory. Hugging Face models use their chat
template's tool-call format instead (`tokenizer.parse_response`, TRL's parser).
"""

import ast
import dataclasses
import inspect
import re
from typing import Callable

CALL_OPEN, CALL_CLOSE = "<call>", "</call>"
RESULT_OPEN, RESULT_CLOSE = "<result>", "</result>"
_CALL = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.S)
_RESULT = re.compile(re.escape(RESULT_OPEN) + r".*?" + re.escape(RESULT_CLOSE), re.S)
ENV_METHODS = ("reset", "get_reward")  # an environment class's methods that are not tools


@dataclasses.dataclass(frozen=True)
class Call:
  name: str
  args: tuple
  kwargs: dict


def parse_call(text: str) -> Call | None:
  """The last tagged call in a turn's text, or None (no call, or a malformed one)."""
  found = _CALL.findall(text)
  if not found:
    return None
  try:
    node = ast.parse(found[-1].strip(), mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
      return None
    args = tuple(ast.literal_eval(a) for a in node.args)
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
  except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
    return None
  return Call(node.func.id, args, kwargs)


def format_call(name: str, *args, **kwargs) -> str:
  """The tagged text of a call (what SFT demonstrations write)."""
  parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
  return f"{CALL_OPEN}{name}({', '.join(parts)}){CALL_CLOSE}"


def format_result(text: str) -> str:
  return f"{RESULT_OPEN}{text}{RESULT_CLOSE}"


def split_observations(text: str) -> list[tuple[str, bool]]:
  """A demonstration's text as (piece, written by the policy) in order: each `<result>...</result>`
  is the environment's (SFT encodes it apart and trains no loss on it, as RL appends it)."""
  pieces, at = [], 0
  for found in _RESULT.finditer(text):
    pieces += [(text[at:found.start()], True), (found.group(), False)]
    at = found.end()
  return [(piece, policy) for piece, policy in pieces + [(text[at:], True)] if piece]


def tools_of(environment) -> dict[str, Callable]:
  """An environment instance's tools: its public methods, less reset and get_reward."""
  return {name: method for name, method in inspect.getmembers(environment, inspect.ismethod)
          if not name.startswith("_") and name not in ENV_METHODS}


def describe(tools: dict[str, Callable]) -> str:
  """One line per tool, `name(arg: type, ...): the docstring's first line`: what a prompt in the
  tagged format lists (a chat template renders the full schema itself)."""
  lines = []
  for name, fn in tools.items():
    signature = inspect.signature(fn)
    params = ", ".join(f"{p.name}: {getattr(p.annotation, '__name__', p.annotation)}"
                       if p.annotation is not inspect.Parameter.empty else p.name
                       for p in signature.parameters.values())
    summary = (inspect.getdoc(fn) or "").strip().splitlines()
    lines.append(f"{name}({params})" + (f": {summary[0]}" if summary else ""))
  return "\n".join(lines)
