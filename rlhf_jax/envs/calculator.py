"""The built-in calculator tool: arithmetic on numbers, read with `ast` and never evaluated as
Python, with limits so that no expression can take long or grow huge."""

import ast
import operator

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
MAX_DIGITS = 64  # a result with more digits is refused: 9 ** 9 ** 9 never gets computed
MAX_EXPONENT = 64


def calculator(expression: str) -> str:
  """Evaluates an arithmetic expression.

  Args:
    expression: numbers with + - * / // % ** and parentheses, e.g. "(12 + 7) * 3".

  Returns:
    The value, an integer where it is one.
  """
  value = _value(ast.parse(expression.strip(), mode="eval").body)
  if isinstance(value, float) and value.is_integer() and abs(value) < 10 ** 15:
    value = int(value)
  return str(value)


def _value(node):
  if isinstance(node, ast.Constant) and type(node.value) in (int, float):
    return node.value
  if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
    return _UNARY[type(node.op)](_value(node.operand))
  if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
    left, right = _value(node.left), _value(node.right)
    if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
      raise ValueError(f"exponent {right} is over {MAX_EXPONENT}")
    result = _BINARY[type(node.op)](left, right)
    if isinstance(result, int) and len(str(abs(result))) > MAX_DIGITS:
      raise ValueError(f"a result over {MAX_DIGITS} digits")
    return result
  raise ValueError(f"not arithmetic: {ast.unparse(node)[:40]}")
