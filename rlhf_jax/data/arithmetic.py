"""The embedded verifiable task: arithmetic problems with worked steps (no files, no download).

Each problem is a record with the columns RL rewards see:
  question  "What is 47 + 38?"
  answer    "85"
  response  the worked solution SFT trains on, column by column, ending in the answer:
            "7 + 8 = 15, write 5 carry 1. 5 + 3 = 8. The answer is 85."
Addition and subtraction of two `digits`-digit numbers (a - b with a >= b) and multiplication
of a `digits`-digit number by one digit (`operations` picks among them). The last integer of a
response is its answer, so the built-in `exact_match` reward checks it against the `answer`
column.

A carry is added to the next column's top digit (4 + 1 -> "5 + 3"), as a borrow is taken
from it (6 - 1 + 10 -> "15 - 8"): taking or forgetting it is one written digit in both
operations. Until issue 46 addition wrote the carry as a third term ("4 + 3 + 1 = 8"), which
its SFT policy sometimes folded into the operand instead; RL from it learnt the borrow but
barely the carry (docs/data.md). Multiplication's carry has no digit to join and stays a
term: "4 * 7 + 2 = 30".

Slips (`data.arithmetic_slips`): a fraction of the training solutions forget their first carry
or borrow, as a hurried person does, and end in the number their steps then write (the `answer`
column stays right). A policy imitating them slips as often, at one decision it can also make
correctly; a verifier's reward can teach it that decision, which imitation alone cannot.
"""

import random

OPERATIONS = ("+", "-", "*")


def _digits(n: int, width: int) -> list[int]:
  """The digits of n, least significant first, padded to `width`."""
  return [(n // 10 ** i) % 10 for i in range(width)]


def _addition(a: int, b: int, width: int, slip: bool) -> tuple[list[str], int]:
  """The column sums, least significant first, and the number they write."""
  steps, carry, value = [], 0, 0
  for i, (x, y) in enumerate(zip(_digits(a, width), _digits(b, width))):
    total = x + y + carry
    last = i == width - 1
    steps.append(f"{x + carry} + {y} = {total}" + ("" if last or total < 10 else f", write {total % 10} carry 1"))
    value += (total if last else total % 10) * 10 ** i
    carry = total // 10
    if slip and carry and not last:
      carry, slip = 0, False  # writes "carry 1", then forgets to add it
  return steps, value


def _subtraction(a: int, b: int, width: int, slip: bool) -> tuple[list[str], int]:
  steps, borrow, value = [], 0, 0
  for i, (x, y) in enumerate(zip(_digits(a, width), _digits(b, width))):
    top = x - borrow
    borrow = int(top < y)
    difference = top + 10 * borrow - y
    steps.append(f"{top + 10 * borrow} - {y} = {difference}" + (", borrow 1" if borrow else ""))
    value += difference * 10 ** i
    if slip and borrow and i < width - 1:
      borrow, slip = 0, False  # writes "borrow 1", then forgets it
  return steps, value


def _multiplication(a: int, b: int, width: int, slip: bool) -> tuple[list[str], int]:
  steps, carry, value = [], 0, 0
  for i, x in enumerate(_digits(a, width)):
    total = x * b + carry
    terms = f"{x} * {b}" + (f" + {carry}" if carry else "")
    last = i == width - 1
    steps.append(f"{terms} = {total}" + ("" if last or total < 10 else f", write {total % 10} carry {total // 10}"))
    value += (total if last else total % 10) * 10 ** i
    carry = total // 10
    if slip and carry and not last:
      carry, slip = 0, False
  return steps, value


def problem(rng: random.Random, digits: int = 2, operations=OPERATIONS, slips: float = 0.0) -> dict:
  """One record: question, answer and the worked `response`, which forgets its first carry (or
  borrow) with probability `slips`: then it ends in the wrong number its steps write."""
  operation = rng.choice(tuple(operations))
  low, high = 10 ** (digits - 1), 10 ** digits - 1
  a = rng.randint(low, high)
  if operation == "*":
    b = rng.randint(2, 9)
  elif operation == "-":
    a, b = sorted((a, rng.randint(low, high)), reverse=True)
  else:
    b = rng.randint(low, high)
  answer = {"+": a + b, "-": a - b, "*": a * b}[operation]
  slip = rng.random() < slips  # drawn after a and b: slips never change the problems
  return {"question": f"What is {a} {operation} {b}?", "answer": str(answer),
          "response": worked_solution(a, operation, b, digits, slip)}


def worked_solution(a: int, operation: str, b: int, digits: int = 2, slip: bool = False) -> str:
  """The response SFT trains on: the columns' steps, then "The answer is N." with the number
  they write (the wrong one when `slip` forgets the first carry or borrow)."""
  work = {"+": _addition, "-": _subtraction, "*": _multiplication}[operation]
  steps, written = work(a, b, digits, slip)
  return f" {'. '.join(steps)}. The answer is {written}."


def generate_problems(count: int, seed: int = 0, start: int = 0, digits: int = 2, operations=OPERATIONS,
                      slips: float = 0.0) -> list:
  """Problems start .. start + count - 1 of a fixed sequence: each depends only on (seed, its
  index), so the held-out problems (another start) never change with the training set's size."""
  return [problem(random.Random(f"arithmetic:{seed}:{i}"), digits, operations, slips)
          for i in range(start, start + count)]
