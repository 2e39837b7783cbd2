"""The embedded verifiable task: arithmetic problems with worked steps (no files, no download).

Each problem is a record with the columns RL rewards see:
  question  "What is 47 + 38?"
  answer    "85"
  response  the worked solution SFT trains on, column by column, ending in the answer:
            "7 + 8 = 15, write 5 carry 1. 4 + 3 + 1 = 8. The answer is 85."
Addition and subtraction of two `digits`-digit numbers (a - b with a >= b) and multiplication
of a `digits`-digit number by one digit. The last integer of a response is its answer, so the
built-in `exact_match` reward checks it against the `answer` column.
"""

import random

OPERATIONS = ("+", "-", "*")


def _digits(n: int, width: int) -> list[int]:
  """The digits of n, least significant first, padded to `width`."""
  return [(n // 10 ** i) % 10 for i in range(width)]


def _addition_steps(a: int, b: int, width: int) -> list[str]:
  steps, carry = [], 0
  for i, (x, y) in enumerate(zip(_digits(a, width), _digits(b, width))):
    total = x + y + carry
    terms = f"{x} + {y}" + (f" + {carry}" if carry else "")
    last = i == width - 1
    steps.append(f"{terms} = {total}" + ("" if last or total < 10 else f", write {total % 10} carry 1"))
    carry = total // 10
  return steps


def _subtraction_steps(a: int, b: int, width: int) -> list[str]:
  steps, borrow = [], 0
  for x, y in zip(_digits(a, width), _digits(b, width)):
    top = x - borrow
    if top < y:
      steps.append(f"{top + 10} - {y} = {top + 10 - y}, borrow 1")
      borrow = 1
    else:
      steps.append(f"{top} - {y} = {top - y}")
      borrow = 0
  return steps


def _multiplication_steps(a: int, b: int, width: int) -> list[str]:
  steps, carry = [], 0
  for i, x in enumerate(_digits(a, width)):
    total = x * b + carry
    terms = f"{x} * {b}" + (f" + {carry}" if carry else "")
    last = i == width - 1
    steps.append(f"{terms} = {total}" + ("" if last or total < 10 else f", write {total % 10} carry {total // 10}"))
    carry = total // 10
  return steps


def problem(rng: random.Random, digits: int = 2, operations=OPERATIONS) -> dict:
  """One record: question, answer and the worked `response`."""
  operation = rng.choice(tuple(operations))
  low, high = 10 ** (digits - 1), 10 ** digits - 1
  a = rng.randint(low, high)
  if operation == "*":
    b = rng.randint(2, 9)
    answer, steps = a * b, _multiplication_steps(a, b, digits)
  elif operation == "-":
    a, b = sorted((a, rng.randint(low, high)), reverse=True)
    answer, steps = a - b, _subtraction_steps(a, b, digits)
  else:
    b = rng.randint(low, high)
    answer, steps = a + b, _addition_steps(a, b, digits)
  worked = ". ".join(steps)
  return {"question": f"What is {a} {operation} {b}?", "answer": str(answer),
          "response": f" {worked}. The answer is {answer}."}


def generate_problems(count: int, seed: int = 0, start: int = 0, digits: int = 2, operations=OPERATIONS) -> list:
  """Problems start .. start + count - 1 of a fixed sequence: each depends only on (seed, its
  index), so the held-out problems (another start) never change with the training set's size."""
  return [problem(random.Random(f"arithmetic:{seed}:{i}"), digits, operations) for i in range(start, start + count)]
