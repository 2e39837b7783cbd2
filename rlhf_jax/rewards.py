"""Reward components: the learned reward model, built-in checkers, and users' Python functions.

`reward.fns` names the sources of an RL run's score and `reward.weights` their weights (all 1
by default); the score of a response is the weighted sum, and each component is logged as
`reward/NAME`. A source is

  model                the reward model of `reward_from`, normalised by the gain and bias the
                       reward stage measured; scored inside the compiled iteration
  length, format       token rewards (algorithms/token_rewards.py): from the response's ids and
                       masks alone, inside the compiled iteration
  exact_match, gsm8k   built-in checkers (`BUILTINS`), on the host
  math_verify          Hugging Face's math-verify (`pip install math-verify`): LaTeX answers,
                       \\boxed{}, fractions, sets, equivalent forms; on the host
  reasoning_gym        a reasoning-gym task's own scorer (`pip install reasoning-gym`), on the
                       records of `data.source=reasoning_gym:NAME`; on the host
  reasoning_gym_solved 1 where that scorer gives full marks, else 0: a checker (evaluation's
                       accuracy, pass@k) for tasks that give partial credit
  PATH.py:NAME         a function in a Python file, on the host
  module.sub:NAME      a function in an importable module, on the host

Host functions are called as TRL calls its reward functions, so existing ones work unchanged:
`fn(prompts=[...], completions=[...], completion_ids=[...], **columns)` with decoded text,
where `columns` are the prompt records' other fields, one entry per completion (repeated for
the k samples of a prompt, in the same order). It returns one float per completion, or None
where it does not apply (TRL's convention: that component then adds nothing to the row, and a
row no component scores gets 0, with a warning). A NaN or inf is an error naming the function,
or with `reward.nonfinite="guard"` a non-finite reward the update's guard refuses.
"""

import dataclasses
import importlib.util
import numbers
import os
import re
import threading
from typing import Callable

from absl import logging
import numpy as np

from rlhf_jax import plugins, registry
from rlhf_jax.algorithms import token_rewards
from rlhf_jax.errors import HostStepError, UserError

MODEL = "model"
NONFINITE = ("error", "guard")  # reward.nonfinite: what a function's NaN or inf does
_INTEGER = re.compile(r"-?\d[\d,]*")


class RewardError(HostStepError):
  """A reward function failed or returned something other than one number per completion."""


def last_integer(text: str) -> int | None:
  """The last integer written in `text` (thousands commas allowed), or None."""
  found = _INTEGER.findall(text)
  return int(found[-1].replace(",", "")) if found else None


def exact_match(prompts, completions, answer, **unused) -> list:
  """1.0 where the completion's last integer is the `answer` column's integer, else 0.0."""
  del prompts, unused
  return [float(last_integer(c) is not None and last_integer(c) == last_integer(str(a)))
          for c, a in zip(completions, answer)]


def gsm8k(prompts, completions, answer, **unused) -> list:
  """GSM8K's checker: the reference answer is what follows its "#### "; the completion's is its
  last number (the common convention)."""
  del prompts, unused
  final = [str(a).split("####")[-1] for a in answer]
  return exact_match(None, completions, final)


# math-verify's limits on one parse and one comparison (its own defaults): sympy can take
# unbounded time on adversarial expressions; past the limit the completion scores 0.
MATH_VERIFY_SECONDS = 5


def math_verify(prompts, completions, answer, **unused) -> list:
  """1.0 where Hugging Face's math-verify finds the completion's answer equivalent to the
  `answer` column's (LaTeX or plain: \\boxed{}, fractions, sets, intervals, 1/2 = 0.5), else
  0.0; each parse and comparison limited to MATH_VERIFY_SECONDS (its SIGALRM limit works in the
  main thread, where host rewards run; elsewhere the calls run without one)."""
  del prompts, unused
  import math_verify as mv  # pylint: disable=g-import-not-at-top  (optional: load_function checks it is there)
  seconds = math_verify_seconds()
  parse = lambda text: mv.parse(text, parsing_timeout=seconds)
  return [float(mv.verify(parse(latex_answer(str(a))), parse(c), timeout_seconds=seconds))
          for c, a in zip(completions, answer)]


def math_verify_seconds() -> int | None:
  """MATH_VERIFY_SECONDS in the main thread; None (no limit) elsewhere, where SIGALRM is not ours."""
  return MATH_VERIFY_SECONDS if threading.current_thread() is threading.main_thread() else None


def final_answer(checker: str, text: str):
  """The answer a majority vote (maj@k) counts: math-verify's parsed expression, printed (1/2
  and \\frac{1}{2} are one answer, 0.5 another), for `math_verify`; what a reasoning-gym task's
  scorer reads for `reasoning_gym_solved`; else the last integer."""
  if checker == "reasoning_gym_solved":
    return reasoning_gym_answer(text) or None
  if checker != "math_verify":
    return last_integer(text)
  import math_verify as mv  # pylint: disable=g-import-not-at-top
  parsed = mv.parse(text, parsing_timeout=math_verify_seconds())
  return str(parsed[0]) if parsed else None


def latex_answer(answer: str) -> str:
  """A bare answer column (MATH's "\\frac12", "\\{1, 2\\}") in $...$: math-verify reads LaTeX
  only between delimiters or in \\boxed{}."""
  return answer if "$" in answer or "\\boxed" in answer else f"${answer}$"


def reasoning_gym(prompts, completions, entry, **unused) -> list:
  """A reasoning-gym task's own scorer (`data.source=reasoning_gym:NAME` gives the `entry`
  column) on the completion's <answer>...</answer>, or on the whole completion without one;
  some tasks give partial credit."""
  del prompts, unused
  import reasoning_gym as rg  # pylint: disable=g-import-not-at-top  (optional: load_function checks it is there)
  score = lambda c, e: rg.get_score_answer_fn(e["metadata"]["source_dataset"])(answer=reasoning_gym_answer(c), entry=e)
  return [float(score(c, e)) for c, e in zip(completions, entry)]


def reasoning_gym_answer(text: str) -> str:
  """What a reasoning-gym scorer reads of a completion: its <answer>...</answer>, else all of it."""
  from reasoning_gym.utils import extract_answer  # pylint: disable=g-import-not-at-top
  return extract_answer(text) or text.strip()


def reasoning_gym_solved(prompts, completions, entry, **unused) -> list:
  """1.0 where the task's own scorer gives full marks, else 0.0 (spell_backward, for one, gives
  partial credit: its `reasoning_gym` reward is not an accuracy)."""
  return [float(score >= 1.0) for score in reasoning_gym(prompts, completions, entry)]


BUILTINS = {"exact_match": exact_match, "gsm8k": gsm8k, "math_verify": math_verify, "reasoning_gym": reasoning_gym,
            "reasoning_gym_solved": reasoning_gym_solved}
CHECKERS = ["exact_match", "gsm8k", "math_verify", "reasoning_gym_solved"]  # 0/1 verdicts: their mean is an accuracy
# built-in -> (module, the pip package it needs)
PACKAGES = {"math_verify": ("math_verify", "math-verify"), "reasoning_gym": ("reasoning_gym", "reasoning-gym"),
            "reasoning_gym_solved": ("reasoning_gym", "reasoning-gym")}


def register(name: str, fn: Callable, *, checker: bool = False) -> None:
  """Adds a reward function by name (`reward.fns=(NAME,)`), called as TRL calls reward
  functions; `checker`: its 0/1 verdicts' mean is evaluation's accuracy."""
  if name in token_rewards.TOKEN_REWARDS:
    raise UserError(f"reward function {name!r}: the name of a token reward (algorithms/token_rewards.py)")
  registry.add(BUILTINS, "reward function", name, fn)
  if checker and name not in CHECKERS:
    CHECKERS.append(name)


def load_function(spec: str) -> Callable:
  """A built-in by name, or the function `NAME` of `PATH.py:NAME` / `module.sub:NAME`."""
  if spec in BUILTINS:
    if spec in PACKAGES and importlib.util.find_spec(PACKAGES[spec][0]) is None:
      raise UserError(f"reward function {spec!r} needs the {PACKAGES[spec][1]} package: pip install {PACKAGES[spec][1]}")
    return BUILTINS[spec]
  where, _, name = spec.rpartition(":")
  if not where or not name:
    raise UserError(f"reward.fns entry {spec!r}: use {MODEL!r}, a built-in ({', '.join(BUILTINS)}), "
                    f"a token reward ({', '.join(token_rewards.TOKEN_REWARDS)}), "
                    "PATH.py:NAME or module.sub:NAME")
  if where.endswith(".py") and not os.path.isfile(where):
    raise UserError(f"reward function file not found: {where}")
  try:
    module = plugins.import_module_at(where)
  except Exception as e:  # the user's file may raise anything while it loads
    raise UserError(f"reward function {spec}: loading {where} raised {type(e).__name__}: {e}") from None
  fn = getattr(module, name, None)
  if not callable(fn):
    raise UserError(f"reward function {spec}: {where} has no function {name!r}")
  return fn


@dataclasses.dataclass
class HostReward:
  """One host component: calls `fn` TRL's way and checks what comes back."""
  name: str
  fn: Callable
  weight: float
  nonfinite: str = "error"

  def __call__(self, prompts: list, completions: list, completion_ids: list, columns: dict):
    """(scores [n] float32, NaN where the function returned None; given [n] bool, False there)."""
    try:
      scores = self.fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
    except Exception as e:  # whatever a user's function raises stops the run as one line
      raise RewardError(f"reward function {self.name} raised {type(e).__name__}: {e}") from None
    try:
      count = len(scores)
    except TypeError:
      raise RewardError(f"reward function {self.name} returned {type(scores).__name__}, "
                        f"not one score per completion") from None
    if count != len(completions):
      raise RewardError(f"reward function {self.name} returned {count} scores for {len(completions)} completions")
    for i, score in enumerate(scores):
      if score is not None and not isinstance(score, (numbers.Real, np.bool_)):
        raise RewardError(f"reward function {self.name} returned a non-number for completion {i}: {score!r}")
    values = np.array([np.nan if s is None else float(s) for s in scores], np.float32)
    given = np.array([s is not None for s in scores])
    bad = np.flatnonzero(given & ~np.isfinite(values))
    if len(bad) and self.nonfinite == "error":
      raise RewardError(f"reward function {self.name} returned {scores[bad[0]]} for completion {bad[0]} "
                        f"({len(bad)} non-finite of {count}): return a number, or None where it does not "
                        'apply (reward.nonfinite="guard" lets the update\'s guard refuse them instead)')
    if len(bad):  # named here: the guard that refuses the batch sees only a non-finite total
      logging.warning("reward function %s returned %d non-finite scores of %d (reward.nonfinite=guard: the "
                      "update's guard refuses this batch)", self.name, len(bad), count)
    return values, given


@dataclasses.dataclass
class RewardPlan:
  """What `config.reward` asks for: the reward model's weight (None: no reward model), the
  host components, and the token rewards ((name, weight) pairs, scored in the graph)."""
  model_weight: float | None
  host: list
  token: tuple = ()

  @property
  def names(self) -> list:
    return ([MODEL] if self.model_weight is not None else []) + [n for n, _ in self.token] + [h.name for h in self.host]

  @property
  def in_graph(self) -> bool:
    """Whether a component scored in the compiled iteration (and so on every row) is there."""
    return self.model_weight is not None or bool(self.token)

  @property
  def weights(self) -> list:
    return (([self.model_weight] if self.model_weight is not None else []) + [w for _, w in self.token]
            + [h.weight for h in self.host])


def plan(reward_cfg) -> RewardPlan:
  fns = tuple(reward_cfg.fns)
  nonfinite = reward_cfg.get("nonfinite", "error")
  if nonfinite not in NONFINITE:
    raise UserError(f"reward.nonfinite={nonfinite!r}: choose one of {NONFINITE}")
  weights = tuple(reward_cfg.weights) or (1.0,) * len(fns)
  if not fns:
    raise UserError("reward.fns is empty: name at least one reward source (e.g. 'model')")
  if len(weights) != len(fns):
    raise UserError(f"reward.weights has {len(weights)} entries for {len(fns)} reward.fns")
  if len(set(fns)) != len(fns):
    raise UserError(f"reward.fns names a source twice: {fns}")
  model_weight, host, token = None, [], []
  for spec, weight in zip(fns, weights):
    if spec == MODEL:
      model_weight = float(weight)
    elif spec in token_rewards.TOKEN_REWARDS:
      token.append((spec, float(weight)))
    else:
      host.append(HostReward(component_name(spec), load_function(spec), float(weight), nonfinite))
  return RewardPlan(model_weight, host, tuple(token))


def component_name(spec: str) -> str:
  """The metric name of a source: the built-in's or the function's name."""
  return spec.rpartition(":")[2] if ":" in spec else spec


def score_on_host(host: list, prompts: list, completions: list, completion_ids: list, columns: dict,
                  with_model: bool):
  """(weighted sum [n], {reward/NAME: scores [n]}) of the host components. A component's None
  adds nothing to its row (NaN in its reward/NAME, which averages over the rows it scored); a
  row no component scores adds 0, with a warning (TRL's convention). A non-finite score that
  `reward.nonfinite="guard"` let through stays in the sum, for the update's guard."""
  scored = {h.name: h(prompts, completions, completion_ids, columns) for h in host}
  per = {f"reward/{name}": values for name, (values, _) in scored.items()}
  weighted = np.stack([h.weight * np.where(given, values, 0.0) for h, (values, given) in zip(host, scored.values())])
  unscored = ~np.any(np.stack([given for _, given in scored.values()]), 0)
  if np.any(unscored) and not with_model:
    row = int(np.flatnonzero(unscored)[0])
    logging.warning("no reward function scored %d of %d completions (every one returned None), so they get 0; "
                    "the first: prompt %r, completion %r", int(unscored.sum()), len(unscored), prompts[row],
                    completions[row])
  return weighted.sum(0).astype(np.float32), per


def score_texts(host: list, prompts, completions, completion_ids, columns, with_model: bool):
  """(weighted sum [n], components [n, len(host)]) of the host components."""
  total, per = score_on_host(host, prompts, completions, completion_ids, columns, with_model)
  return total, np.stack([per[f"reward/{h.name}"] for h in host], 1)
