"""Tools and their calls: TRL's convention for tools, and the tagged call format of the
embedded tokenizers.

A tool is a typed Python function with a Google-style docstring (TRL's `tools=[fn]`); an
environment class in TRL's `environment_factory` convention has one instance per trajectory,
`reset(**record) -> str | None` and public methods that are its tools. Both are accepted as
users write them for TRL.

Two call formats (`env.call_format`), each a `parse` of the policy's turn and an `observation`
of a result:

- `TaggedFormat`, the embedded tokenizers' (byte, SentencePiece: no chat template): a call is
  `<call>name(arg, key=value)</call>`, the arguments Python literals parsed with `ast` (never
  evaluated), and the result is appended as `<result>text</result>`.
- `ChatTemplateFormat`, Hugging Face chat models' (Hermes, Qwen 2.5 and 3, and the templates
  that follow them): the model writes `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
  (JSON), the tools are listed in the prompt by the template from their JSON schemas
  (`json_schema`: transformers' `get_json_schema`), and the result is a `tool` message rendered
  by the tokenizer's own template: the observation is the template's text from the call's
  close to the next assistant turn (its end-of-turn, the tool message, the assistant header).

A malformed call is plain text, as in TRL: the turn ends the trajectory.
"""

import ast
import dataclasses
import inspect
import json
import re
import types
import typing
from typing import Callable

from rlhf_jax.errors import UserError

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


@dataclasses.dataclass(frozen=True)
class TaggedFormat:
  """`<call>name(args)</call>`, answered by `<result>text</result>`."""
  close: str = CALL_CLOSE

  def parse(self, text: str) -> Call | None:
    return parse_call(text)

  def observation(self, call: Call, result: str) -> str:
    del call
    return format_result(result)


TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_TOOL_CALL = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.S)
_RESULT_SLOT = "\x00result\x00"  # stands for the result in a rendered tool message


class ChatTemplateFormat:
  """Hermes-style JSON calls in `<tool_call>` tags, answered by the chat template's `tool`
  message. `render(messages, add_generation_prompt) -> text` is the tokenizer's template."""
  close = TOOL_CALL_CLOSE

  def __init__(self, render: Callable):
    self.render = render
    self._around = {}  # tool name -> (text before its result, text after)

  def parse(self, text: str) -> Call | None:
    found = _TOOL_CALL.findall(text)
    if not found:
      return None
    try:
      call = json.loads(found[-1])
      arguments = call.get("arguments", call.get("parameters", {}))
      arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
    except (json.JSONDecodeError, AttributeError, RecursionError):
      return None
    if not isinstance(call.get("name"), str) or not isinstance(arguments, dict):
      return None
    return Call(call["name"], (), arguments)

  def observation(self, call: Call, result: str) -> str:
    if call.name not in self._around:
      self._around[call.name] = self._tool_message_around(call.name)
    before, after = self._around[call.name]
    return before + result + after

  def _tool_message_around(self, name: str) -> tuple[str, str]:
    """The template's text from an assistant's call's close to the next assistant turn, split
    where the result goes (rendered once per tool, with a stand-in result)."""
    calls = [{"type": "function", "function": {"name": name, "arguments": {}}}]
    turns = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "", "tool_calls": calls}]
    called = self.render(turns, False)
    answered = self.render(turns + [{"role": "tool", "name": name, "content": _RESULT_SLOT}], True)
    cut = called.rfind(self.close)
    if cut < 0 or _RESULT_SLOT not in answered or not answered.startswith(called[:cut + len(self.close)]):
      raise UserError("the tokenizer's chat template does not render tool calls and tool messages in "
                      "<tool_call> JSON (Hermes, Qwen): set env.call_format=tagged")
    before, _, after = answered[cut + len(self.close):].partition(_RESULT_SLOT)
    return before, after


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", tuple: "array",
               dict: "object", type(None): "null"}


def json_schema(fn: Callable) -> dict:
  """A tool's JSON schema from its signature and Google-style docstring, as transformers'
  `get_json_schema` writes it (what chat templates list and TRL passes them)."""
  doc = inspect.getdoc(fn) or ""
  description, args, returns = _docstring_sections(doc)
  hints = typing.get_type_hints(fn)
  properties, required = {}, []
  for name, param in inspect.signature(fn).parameters.items():
    if name not in hints:
      raise UserError(f"tool {fn.__name__}: parameter {name!r} needs a type annotation (its JSON schema's type)")
    properties[name] = {**_json_type(hints[name], fn.__name__), **({"description": args[name]} if name in args else {})}
    if param.default is inspect.Parameter.empty:
      required.append(name)
  schema = {"name": fn.__name__, "description": description,
            "parameters": {"type": "object", "properties": properties, **({"required": required} if required else {})}}
  if "return" in hints or returns:
    schema["return"] = {**(_json_type(hints["return"], fn.__name__) if "return" in hints else {}),
                        **({"description": returns} if returns else {})}
  return {"type": "function", "function": schema}


def _json_type(hint, tool: str) -> dict:
  origin, inner = typing.get_origin(hint), typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    kinds = [a for a in inner if a is not type(None)]
    base = _json_type(kinds[0], tool) if len(kinds) == 1 else {"type": [_json_type(a, tool)["type"] for a in kinds]}
    return {**base, "nullable": True} if type(None) in inner else base
  if origin in (list, tuple) and inner:
    return {"type": "array", "items": _json_type(inner[0], tool)}
  if (origin or hint) in _JSON_TYPES:
    return {"type": _JSON_TYPES[origin or hint]}
  raise UserError(f"tool {tool}: no JSON schema type for {hint!r} (use str, int, float, bool, list, dict)")


def _docstring_sections(doc: str) -> tuple[str, dict, str]:
  """(the description, {argument: its description}, the Returns description) of a Google docstring."""
  parts = re.split(r"^\s*(Args|Arguments|Returns|Raises):\s*$", doc, flags=re.M)
  description, sections = parts[0].strip(), dict(zip(parts[1::2], parts[2::2]))
  args, name = {}, None
  for line in (sections.get("Args") or sections.get("Arguments") or "").splitlines():
    found = re.match(r"^\s*(\w+)(?:\s*\(.*?\))?:\s*(.*)$", line)
    if found:
      name = found.group(1)
      args[name] = found.group(2).strip()
    elif name and line.strip():
      args[name] = (args[name] + " " + line.strip()).strip()
  returns = " ".join(line.strip() for line in sections.get("Returns", "").splitlines() if line.strip())
  return description, args, returns
