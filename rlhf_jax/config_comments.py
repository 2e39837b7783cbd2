"""What configs/*.py's source says about each field: the comment beside (a trailing `#`) or
directly above the line that sets it, found by walking the file's syntax tree (config_reference.py
writes them into docs/config_reference.md). A preset's function (`pipeline.arithmetic`) has its own
comments: those of the functions it builds on, its own winning, never another preset's."""

import ast
import functools
import io
import os
import tokenize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


def config_path(name: str) -> str:
  return os.path.join(CONFIGS, name + ".py")


def source_of(name: str) -> str:
  with open(config_path(name)) as f:
    return f.read()


def function(tree, name: str):
  return next((node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name), None)


def line_comments(source: str) -> tuple[dict, dict]:
  """(trailing, own_line): line number -> the text of a comment that ends a code line, or that
  fills a line of its own."""
  trailing, own_line = {}, {}
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      line, column = token.start
      text = token.string.lstrip("#").strip()
      (trailing if token.line[:column].strip() else own_line)[line] = text
  return trailing, own_line


def comment_of(line: int, trailing: dict, own_line: dict) -> str:
  """The block of comment lines directly above `line` (no blank line between), then its trailing comment."""
  above, previous = [], line - 1
  while previous in own_line:
    above.insert(0, own_line[previous])
    previous -= 1
  return " ".join(part for part in (" ".join(above), trailing.get(line, "")) if part)


def attribute_path(node) -> list | None:
  """`c.data.seq_len` -> ["data", "seq_len"] (the root variable dropped); `c[stage].data` ->
  ["*", "data"] (a key computed at run time); None for anything else."""
  if isinstance(node, ast.Name):
    return []
  if isinstance(node, ast.Attribute):
    parent = attribute_path(node.value)
    return None if parent is None else parent + [node.attr]
  if isinstance(node, ast.Subscript):
    parent = attribute_path(node.value)
    key = node.slice.value if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str) else "*"
    return None if parent is None else parent + [key]
  return None


def dict_fields(node, prefix: list) -> list:
  """(path, line) of each key a `dict(...)`, `{...}` or `ConfigDict(dict(...))` expression sets, nested ones too."""
  if isinstance(node, ast.Call) and node.keywords:  # dict(a=1, b=dict(c=2))
    pairs = [(keyword.arg, keyword.lineno, keyword.value) for keyword in node.keywords if keyword.arg]
  elif isinstance(node, ast.Call) and len(node.args) == 1:  # ConfigDict(dict(...))
    return dict_fields(node.args[0], prefix)
  elif isinstance(node, ast.Dict):
    pairs = [(key.value, key.lineno, value) for key, value in zip(node.keys, node.values)
             if isinstance(key, ast.Constant) and isinstance(key.value, str)]
  else:
    return []
  found = []
  for name, line, value in pairs:
    found.append((prefix + [name], line))
    found.extend(dict_fields(value, prefix + [name]))
  return found


def assigned_fields(node) -> list:
  """(path, line) of each field one statement sets: `c.a.b = v` (tuples of targets too),
  `c.a = ConfigDict(dict(b=v))` and `c.a.update(dict(b=v))`."""
  if isinstance(node, ast.Assign):
    found = []
    for target in node.targets:
      for element in (target.elts if isinstance(target, ast.Tuple) else [target]):
        path = attribute_path(element)
        if path:  # a plain variable (`c = ...`, `small = ...`) is not a field
          found.append((path, element.lineno))
          found.extend(dict_fields(node.value, path))
    return found
  call = node.value if isinstance(node, ast.Expr) else None
  if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "update":
    path = attribute_path(call.func.value)
    if path and call.args:
      return dict_fields(call.args[0], path)
  return []


@functools.lru_cache(maxsize=None)
def field_comments(name: str, entry: str = "") -> dict:
  """Dotted path as `configs/NAME.py` writes it (`*` for a computed key) -> the comment on the
  last line that sets it with one: in the function `entry` and those it builds on (a preset's
  own comments win), or anywhere in the file without one."""
  source = source_of(name)
  trailing, own_line = line_comments(source)
  tree = ast.parse(source)
  nodes = [node for root in reversed(reachable(tree, entry)) for node in outside_dispatches(root)] if entry else ast.walk(tree)
  comments = {}
  for node in nodes:
    for path, line in sorted(assigned_fields(node), key=lambda found: found[1]):
      comment = comment_of(line, trailing, own_line)
      if comment:
        comments[".".join(path)] = comment
  return comments


def is_dispatch(node) -> bool:
  """`if preset == "x": return x()`: another preset's function, not this one's."""
  return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and isinstance(node.test.left, ast.Name)
          and node.test.left.id == "preset" and len(node.body) == 1 and isinstance(node.body[0], ast.Return))


def outside_dispatches(node):
  """`node` and everything under it but preset dispatches (`is_dispatch`)."""
  yield node
  for child in ast.iter_child_nodes(node):
    if not is_dispatch(child):
      yield from outside_dispatches(child)


def reachable(tree, entry: str) -> list:
  """The function `entry` and the functions of the same file it calls, most specific first."""
  found, queue = [], [entry]
  while queue:
    node = function(tree, queue.pop(0))
    if node is not None and node not in found:
      found.append(node)
      queue += [call.func.id for call in outside_dispatches(node)
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Name)]
  return found


def preset_function(name: str, preset: str) -> str:
  """The function `configs/NAME.py`'s get_config hands `preset` to (`return arithmetic()`)."""
  get_config = function(ast.parse(source_of(name)), "get_config")
  for node in ast.walk(get_config):
    if is_dispatch(node) and any(isinstance(c, ast.Constant) and c.value == preset for c in node.test.comparators):
      call = node.body[0].value
      if isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
        return call.func.id
  return "get_config"
