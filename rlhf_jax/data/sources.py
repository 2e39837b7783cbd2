"""Where text comes from: the embedded corpus, TFDS, local text or JSONL files.

`data.source` is one of:
  embedded            the generated review corpus (no files, no network)
  embedded:arithmetic the generated arithmetic problems (data/arithmetic.py): records with
                      `question`, `answer` and a worked `response`
  tfds:NAME           a TFDS dataset the user has prepared (e.g. tfds:tiny_shakespeare)
  text:PATH           a UTF-8 file; documents are separated by blank lines
  jsonl:PATH          one JSON object per line: `text` for pretraining, `prompt`/`response` for
                      SFT, any fields for RL prompts (records)

Every loader returns plain Python lists, so what follows (tokenising, batching) is the same.
The RL stage reads records (`load_records`) from jsonl and embedded:arithmetic: the prompt is
the `data.prompt_field` field or `data.prompt_template` filled from the fields, used whole, and
the other fields are columns for the reward functions. The embedded reviews, text and TFDS
give it documents, whose openings are the prompts.
"""

import dataclasses

import json
import os
import random

from rlhf_jax.data import arithmetic, corpus
from rlhf_jax.errors import UserError


def load_documents(data_cfg, split: str) -> list[str]:
  """Documents of `split` ('train' or 'eval') for language modelling."""
  kind, _, arg = data_cfg.source.partition(":")
  if data_cfg.source == ARITHMETIC:
    return [r.fields["question"] + r.fields["response"] for r in load_records(data_cfg, split)]
  if kind == "embedded":
    return _embedded(data_cfg, split)
  if kind == "tfds":
    return _paragraphs(_tfds_texts(arg, data_cfg, split))
  if kind == "text":
    return file_split(_paragraphs([_read_text(arg)]), data_cfg, split)
  if kind == "jsonl":
    return file_split([string_field(r, data_cfg.text_field, arg, n) for n, r in read_jsonl(arg)], data_cfg, split)
  raise UserError(f"data.source={data_cfg.source!r}: expected embedded, {ARITHMETIC}, tfds:NAME, text:PATH or "
                  "jsonl:PATH")


def load_pairs(data_cfg, split: str) -> list[tuple[str, str]]:
  """(prompt, response) pairs for SFT. JSONL gives them; other sources split documents."""
  if is_record_source(data_cfg):
    return [(prompt_text(r, data_cfg), string_field(r.fields, "response", *r.where.rsplit(":", 1)))
            for r in load_records(data_cfg, split)]
  seed = data_cfg.seed + (0 if split == "train" else 1)
  return [split_opening(doc, data_cfg, random.Random(f"{seed}:{i}"))
          for i, doc in enumerate(load_documents(data_cfg, split))]


ARITHMETIC = "embedded:arithmetic"


@dataclasses.dataclass(frozen=True)
class Record:
  where: str  # FILE:LINE (or the generator's name and index), for errors
  fields: dict


def is_record_source(data_cfg) -> bool:
  return data_cfg.source == ARITHMETIC or data_cfg.source.startswith("jsonl:")


def load_records(data_cfg, split: str) -> list[Record]:
  """The records of `split`: `data.eval_source`'s for eval when it is set, else the held-out
  slice of `data.source` (the last eval_fraction of a file; the arithmetic problems after the
  training ones)."""
  eval_source = data_cfg.get("eval_source", "")
  source = eval_source if split == "eval" and eval_source else data_cfg.source
  if source == ARITHMETIC:
    return _arithmetic_records(data_cfg, held_out=split == "eval" and not eval_source)
  kind, _, path = source.partition(":")
  if kind != "jsonl":
    raise UserError(f"prompt records come from jsonl:PATH or {ARITHMETIC}, not {source!r}")
  records = [Record(f"{path}:{n}", row) for n, row in read_jsonl(path)]
  return records if split == "eval" and eval_source else file_split(records, data_cfg, split)


def _arithmetic_records(data_cfg, held_out: bool) -> list[Record]:
  """The held-out problems (`eval_docs` of them, after the training ones in the sequence), or
  the training problems without any question the held-out ones ask (two digits allow only
  ~13k distinct problems, so a large training set would contain most of them)."""
  make = lambda count, start: arithmetic.generate_problems(count, data_cfg.seed, start, data_cfg.arithmetic_digits)
  evaluation = make(data_cfg.eval_docs, data_cfg.embedded_docs)
  if held_out:
    return [Record(f"{ARITHMETIC}:{data_cfg.embedded_docs + i}", p) for i, p in enumerate(evaluation)]
  asked = {p["question"] for p in evaluation}
  return [Record(f"{ARITHMETIC}:{i}", p) for i, p in enumerate(make(data_cfg.embedded_docs, 0))
          if p["question"] not in asked]


def prompt_text(record: Record, data_cfg) -> str:
  """The record's prompt: `data.prompt_template` filled from its fields, else its
  `data.prompt_field` field."""
  template = data_cfg.get("prompt_template", "")
  if template:
    try:
      return template.format(**record.fields)
    except KeyError as e:
      raise UserError(f"{record.where}: data.prompt_template names field {e} (has {sorted(record.fields)})") from None
  return string_field(record.fields, data_cfg.get("prompt_field", "prompt"), *record.where.rsplit(":", 1))


def split_opening(doc: str, data_cfg, rng: random.Random) -> tuple[str, str]:
  """Cuts a document after its first few words: (opening, the rest with its leading space)."""
  words = doc.split(" ")
  n = rng.randint(data_cfg.prompt_words_min, data_cfg.prompt_words_max)
  n = max(1, min(n, len(words) - 1))
  return " ".join(words[:n]), " " + " ".join(words[n:])


def _embedded(data_cfg, split):
  if split == "train":
    return corpus.generate_reviews(data_cfg.embedded_docs, seed=data_cfg.seed)
  return corpus.generate_reviews(data_cfg.eval_docs, seed=data_cfg.seed, start=data_cfg.embedded_docs)


def file_split(items: list, data_cfg, split: str) -> list:
  """Last `eval_fraction` of a file is held out, so the split is stable across runs."""
  if not items:
    raise UserError(f"data.source={data_cfg.source!r} has no documents")
  n_eval = max(1, int(len(items) * data_cfg.eval_fraction)) if len(items) > 1 else 0
  train, held_out = items[:len(items) - n_eval], items[len(items) - n_eval:]
  return train if split == "train" else (held_out or train)


def _paragraphs(texts: list[str]) -> list[str]:
  return [p.strip() for t in texts for p in t.replace("\r\n", "\n").split("\n\n") if p.strip()]


def _read_text(path: str) -> str:
  if not os.path.isfile(path):
    raise UserError(f"data file not found: {path}")
  with open(path, encoding="utf-8") as f:
    return f.read()


def read_jsonl(path: str):
  """Yields (line number, object); a malformed line names file and line."""
  for number, line in enumerate(_read_text(path).splitlines(), start=1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f"{path}:{number}: malformed JSON ({e.msg})") from None
    if not isinstance(row, dict):
      raise UserError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
    yield number, row


def string_field(row: dict, key: str, path: str, number: int) -> str:
  value = row.get(key)
  if not isinstance(value, str):
    raise UserError(f"{path}:{number}: missing string field {key!r} (has {sorted(row)})")
  return value


def _tfds_texts(name: str, data_cfg, split: str) -> list[str]:
  """Texts of a TFDS dataset the user has prepared locally (nothing is downloaded here)."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("data.source=tfds:... needs tensorflow-datasets: pip install -e '.[tfds]'") from None
  tfds_split = data_cfg.train_split if split == "train" else data_cfg.eval_split
  try:
    ds = tfds.load(name, split=tfds_split, download=False, data_dir=data_cfg.tfds_data_dir or None)
  except Exception as e:  # TFDS raises many types; the message is what the user needs
    raise UserError(f"TFDS dataset {name!r} split {tfds_split!r} is not available locally: "
                    f"{str(e).splitlines()[0]}") from None
  texts = []
  for example in tfds.as_numpy(ds):
    if data_cfg.text_field not in example:
      raise UserError(f"TFDS {name!r} has no field {data_cfg.text_field!r} (has {sorted(example)})")
    texts.append(example[data_cfg.text_field].decode("utf-8"))
  return texts
