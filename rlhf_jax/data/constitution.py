"""A constitution (Bai et al. 2022, "Constitutional AI"): principles, each a critique request and
a revision request (the supervised phase's critique -> revision chain, training/policy/revise.py)
and optionally a `choice` sentence (the RL phase: the judge asked which response follows it).

A constitution is `embedded` (constitution.jsonl beside this file: five principles written here
after the paper's) or a file: JSONL, one principle per line, or JSON, a list of principles.
Principles are drawn for each prompt (or pair) from (seed, its index) alone, so a prompt's
principles do not depend on the batch it is in, nor on a resume.
"""

import json
import os
from typing import NamedTuple

import numpy as np

from rlhf_jax.data import sources
from rlhf_jax.errors import UserError

EMBEDDED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "constitution.jsonl")


class Principle(NamedTuple):
  critique: str  # the critique request: what to find wrong with the response
  revision: str  # the revision request: how to rewrite it
  choice: str = ""  # the judge's question between two responses ("" where the file gives none)


def load(source: str, setting: str = "revise.constitution") -> tuple:
  """The principles of `source` ("embedded" or a .json / .jsonl file); a bad file is one line."""
  path = EMBEDDED if source == "embedded" else source
  if not os.path.isfile(path):
    raise UserError(f"{setting}={source!r}: no such file (\"embedded\" is the built-in constitution)")
  if path.endswith(".jsonl"):
    rows = list(sources.read_jsonl(path))
  else:
    rows = list(enumerate(json_list(path), start=1))
  if not rows:
    raise UserError(f"{setting}={source!r}: the constitution has no principles")
  return tuple(principle(row, f"{path}:{number}") for number, row in rows)


def json_list(path: str) -> list:
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: malformed JSON ({getattr(e, 'msg', e)})") from None
  if not isinstance(value, list):
    raise UserError(f"{path}: expected a JSON list of principles, got {type(value).__name__}")
  return value


def principle(row, where: str) -> Principle:
  """A principle from one object: `critique` and `revision` strings, `choice` optional."""
  if not isinstance(row, dict):
    raise UserError(f"{where}: a principle is an object with critique and revision strings")
  for key in ("critique", "revision"):
    if not isinstance(row.get(key), str) or not row[key].strip():
      raise UserError(f"{where}: the principle has no {key!r} string (has {sorted(row)})")
  if not isinstance(row.get("choice", ""), str):
    raise UserError(f"{where}: the principle's 'choice' is not a string")
  return Principle(row["critique"], row["revision"], row.get("choice", ""))


def draw(count: int, k: int, seed: int, index: int) -> list:
  """k distinct principle indices out of `count` for item `index`: a function of (seed, index)."""
  if not 1 <= k <= count:
    raise UserError(f"{k} principles per prompt from a constitution of {count}: choose 1 to {count}")
  return [int(i) for i in np.random.default_rng([seed, index]).choice(count, k, replace=False)]
