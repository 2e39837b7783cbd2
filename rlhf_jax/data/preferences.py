"""Preference pairs (prompt, chosen, rejected): from files, or labelled by a gold judge.

`preference.source` is one of:
  generated      two policy samples per prompt, labelled by a gold judge (see `label_pairs`)
  jsonl:PATH     objects with `prompt`, `chosen`, `rejected` (`preference.*_field` name them;
                 chosen and rejected may be chat conversations)
  hf:PATH        the same as a Hugging Face `datasets` file or folder (parquet, JSON, arrow)
  hh:PATH        Anthropic HH JSONL: `chosen`/`rejected` whole dialogues sharing a prefix
  tfds:NAME      a prepared TFDS dataset with those three text fields
"""

import os

import numpy as np

from rlhf_jax.data import sources
from rlhf_jax.errors import UserError

ASSISTANT = sources.ASSISTANT


def load_pairs(pref_cfg, split: str, count_tokens=None) -> list[tuple[str, str, str]]:
  """(prompt, chosen, rejected) of the split; `count_tokens` for a template's truncated field."""
  kind, _, arg = pref_cfg.source.partition(":")
  if kind in ("jsonl", "hf"):  # records, held out as data sources are (data/sources.py)
    return [pair_of(record, pref_cfg, count_tokens) for record in sources.load_records(pref_cfg, split)]
  if kind == "hh":
    rows = [split_shared_prefix(sources.string_field(r, "chosen", arg, n),
                                sources.string_field(r, "rejected", arg, n)) for n, r in sources.read_jsonl(arg)]
  elif kind == "tfds":
    return _tfds_rows(arg, pref_cfg, split)  # TFDS has its own splits
  else:
    raise UserError(f"preference.source={pref_cfg.source!r}: expected generated, jsonl:PATH, hf:PATH, hh:PATH or "
                    "tfds:NAME")
  return sources.file_split(rows, pref_cfg, split)


def pair_of(record: sources.Record, pref_cfg, count_tokens=None) -> tuple[str, str, str]:
  """(prompt, chosen, rejected) of a record: its `preference.prompt_field` (or
  `preference.prompt_template` filled from its fields), `chosen_field` and `rejected_field` strings; whole dialogues (no prompt field: "") or conversations (lists of chat
  messages) are split where they part, as `hh:` is."""
  where = record.where.rsplit(":", 1)
  prompt, chosen, rejected = (pref_cfg.get(f"{k}_field", k) for k in ("prompt", "chosen", "rejected"))
  if any(isinstance(record.fields.get(k), list) for k in (chosen, rejected)):
    return split_shared_prefix(*(sources.dialogue_text(sources.conversation(record.fields, k, *where))
                                 for k in (chosen, rejected)))
  texts = [sources.string_field(record.fields, k, *where) for k in (chosen, rejected)]
  if not (prompt or pref_cfg.get("prompt_template")):
    return split_shared_prefix(*texts)
  return (sources.prompt_text(record, pref_cfg, count_tokens), *texts)  # the field, or `preference.prompt_template` filled


def split_shared_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
  """HH dialogues share everything up to the last assistant turn: that is the prompt."""
  common = os.path.commonprefix([chosen, rejected])
  cut = common.rfind(ASSISTANT)
  cut = cut + len(ASSISTANT) if cut >= 0 else common.rfind(" ") + 1
  return chosen[:cut], chosen[cut:], rejected[cut:]


def label_pairs(gold_a: np.ndarray, gold_b: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
  """True where `a` is preferred: drawn from Bradley-Terry, P(a > b) = sigmoid(scale * (g_a - g_b)).

  Sampling (not argmax) makes the labels noisy the way human labels are; `scale` sets how
  sure the simulated labeller is.
  """
  p_a = 1.0 / (1.0 + np.exp(-scale * (np.asarray(gold_a) - np.asarray(gold_b))))
  return rng.random(p_a.shape) < p_a


def _tfds_rows(name: str, pref_cfg, split: str):
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("preference.source=tfds:... needs tensorflow-datasets: pip install -e '.[tfds]'") from None
  tfds_split = pref_cfg.train_split if split == "train" else pref_cfg.eval_split
  try:
    ds = tfds.load(name, split=tfds_split, download=False)
  except Exception as e:  # TFDS raises many types; the message is what the user needs
    raise UserError(f"TFDS dataset {name!r} split {tfds_split!r} is not available locally: "
                    f"{str(e).splitlines()[0]}") from None
  fields = ("prompt", "chosen", "rejected")
  rows = []
  for example in tfds.as_numpy(ds):
    if any(f not in example for f in fields):
      raise UserError(f"TFDS {name!r} needs fields {fields} (has {sorted(example)})")
    rows.append(tuple(example[f].decode("utf-8") for f in fields))
  return rows
