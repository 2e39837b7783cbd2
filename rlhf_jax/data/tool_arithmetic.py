"""The embedded tool task: chained arithmetic that a small model cannot do in its head, with
demonstrations that call the calculator tool (no files, no download).

Each problem is a record with the columns RL rewards see:
  question  "What is 47 * 38 + 125?"
  answer    "1911"
  response  the demonstration SFT trains on, a call, the tool's result and the answer:
            " <call>calculator('47 * 38 + 125')</call><result>1911</result> The answer is 1911."
The `<result>` is the environment's text: SFT encodes it apart and trains no loss on it
(training/lm/lm_trainer.encode_response), as RL appends it to a trajectory.

Slips (`data.arithmetic_slips`): that fraction of the demonstrations answers without the tool
(" The answer is 1911.", right, as someone who multiplies in their head). A policy imitating
them skips the tool as often and then answers from a product it cannot compute; the
verifier's reward can teach it to call, which imitation alone cannot.
"""

import random

from rlhf_jax.envs import tools
from rlhf_jax.envs.calculator import calculator

FORMS = ("{a} * {b} + {c}", "{a} * {b} - {c}", "({a} + {b}) * {c}")


def problem(rng: random.Random, digits: int = 2, slips: float = 0.0) -> dict:
  """One record: question, answer and the demonstration (without the tool with probability `slips`)."""
  low, high = 10 ** (digits - 1), 10 ** digits - 1
  form = rng.choice(FORMS)
  expression = form.format(a=rng.randint(low, high), b=rng.randint(low, high), c=rng.randint(low, high))
  answer = calculator(expression)
  skips_the_tool = rng.random() < slips  # drawn after the problem: slips never change it
  answer_text = f" The answer is {answer}."
  call = " " + tools.format_call("calculator", expression) + tools.format_result(answer)
  return {"question": f"What is {expression}?", "answer": answer,
          "response": answer_text if skips_the_tool else call + answer_text}


def generate_problems(count: int, seed: int = 0, start: int = 0, digits: int = 2, slips: float = 0.0) -> list:
  """Problems start .. start + count - 1 of a fixed sequence, each a function of (seed, index)."""
  return [problem(random.Random(f"tool_arithmetic:{seed}:{i}"), digits, slips) for i in range(start, start + count)]
