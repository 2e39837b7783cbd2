"""Where text comes from: the embedded corpus, TFDS, local text or JSONL files.

`data.source` is one of:
  embedded            the generated review corpus (no files, no network)
  embedded:arithmetic the generated arithmetic problems (data/arithmetic.py): records with
                      `question`, `answer` and a worked `response`
  embedded:tool_arithmetic  chained arithmetic whose demonstrations call the calculator tool
                      (data/tool_arithmetic.py), for multi-turn RL with `env.tools`
  tfds:NAME           a TFDS dataset the user has prepared (e.g. tfds:tiny_shakespeare); records
                      when it has the prompt field (or a prompt template is set), else documents
  text:PATH           a UTF-8 file; documents are separated by blank lines
  jsonl:PATH          one JSON object per line: `text` for pretraining, `prompt`/`response` for
                      SFT, any fields for RL prompts (records)
  hf:PATH             Hugging Face `datasets` local files, as records: a parquet, JSON(L) or
                      arrow file (or a glob of them: a hub download's `train-*.parquet`), or a
                      `save_to_disk` folder (of a DatasetDict: its `train_split` and `eval_split`)
  revise:DIR          a finished revise run's revisions (DIR/revisions.jsonl: Constitutional AI's
                      final revisions as `prompt`/`response` records, training/policy/revise.py)
  judge_pairs:DIR     a finished reward run's generated pairs as records teaching a judge model:
                      each pair in both orders, answered " A" or " B" by the gold judge's
                      preference (data/judge_records.py)
  reasoning_gym:NAME  a task of PyPI's reasoning-gym, generated offline: records with `prompt`
                      (the question), `answer` and `entry` (what its scorer reads: the
                      `reasoning_gym` reward); `embedded_docs` training and `eval_docs` held-out
                      ones, from seeds that do not overlap (training drops the held-out
                      questions); `reasoning_gym_options` (JSON) the task's own settings

Every loader returns plain Python lists, so what follows (tokenising, batching) is the same.
The RL stage reads records (`load_records`) from jsonl, hf, tfds and the generated tasks: the prompt is
the `data.prompt_field` field or `data.prompt_template` filled from the fields, used whole, and
the other fields are columns for the reward functions. The embedded reviews, text and TFDS
give it documents, whose openings are the prompts.
"""

import dataclasses
import glob
import importlib
import json
import os
import random

import numpy as np

from rlhf_jax.data import arithmetic, corpus, judge_records, tool_arithmetic
from rlhf_jax.errors import UserError
from rlhf_jax.workdir import RunDir


def load_documents(data_cfg, split: str) -> list[str]:
  """Documents of `split` ('train' or 'eval') for language modelling."""
  kind, _, arg = data_cfg.source.partition(":")
  if data_cfg.source in GENERATED:
    return [r.fields["question"] + r.fields["response"] for r in load_records(data_cfg, split)]
  if kind == "embedded":
    return _embedded(data_cfg, split)
  if kind == "tfds":
    return _paragraphs(_tfds_texts(arg, data_cfg, split))
  if kind == "text":
    return file_split(_paragraphs([_read_text(arg)]), data_cfg, split)
  if kind == "jsonl":
    return file_split([string_field(r, data_cfg.text_field, arg, n) for n, r in read_jsonl(arg)], data_cfg, split)
  if kind == "hf":
    return [string_field(r.fields, data_cfg.text_field, *r.where.rsplit(":", 1)) for r in load_records(data_cfg, split)]
  raise UserError(f"data.source={data_cfg.source!r}: expected embedded, {', '.join(GENERATED)}, tfds:NAME, text:PATH, "
                  "jsonl:PATH or hf:PATH")


def load_pairs(data_cfg, split: str, count_tokens=None) -> list[tuple]:
  """(prompt, response) pairs for SFT. Records give them (`sft_pair`; `count_tokens` for
  `truncated_fields`); other sources split documents."""
  if is_record_source(data_cfg):
    return [sft_pair(r, data_cfg, count_tokens) for r in load_records(data_cfg, split)]
  seed = data_cfg.seed + (0 if split == "train" else 1)
  return [split_opening(doc, data_cfg, random.Random(f"{seed}:{i}"))
          for i, doc in enumerate(load_documents(data_cfg, split))]


ARITHMETIC = "embedded:arithmetic"
GENERATED = (ARITHMETIC, "embedded:tool_arithmetic")  # records made by data/arithmetic.py, data/tool_arithmetic.py


@dataclasses.dataclass(frozen=True)
class Record:
  where: str  # FILE:LINE (a table's FILE:ROW, the generator's name and index), for errors
  fields: dict


def is_record_source(data_cfg) -> bool:
  kind, _, name = data_cfg.source.partition(":")
  if kind == "tfds":  # records when they hold prompts; a corpus's documents give openings
    prompt_field = data_cfg.get("prompt_field", "prompt")
    return bool(data_cfg.get("prompt_template")) or prompt_field in _tfds_fields(name, data_cfg)
  return data_cfg.source in GENERATED or kind in ("jsonl", "hf", "reasoning_gym", "revise", judge_records.KIND)


def load_records(data_cfg, split: str) -> list[Record]:
  """The records of `split`: `data.eval_source`'s for eval when it is set, else the held-out
  slice of `data.source` (the last eval_fraction of a file; the arithmetic problems after the
  training ones)."""
  eval_source = data_cfg.get("eval_source", "")
  source = eval_source if split == "eval" and eval_source else data_cfg.source
  if source in GENERATED:
    return _generated_records(source, data_cfg, held_out=split == "eval" and not eval_source)
  kind, _, path = source.partition(":")
  whole = split == "eval" and bool(eval_source)  # a source of its own is held out whole
  if kind in ("jsonl", "revise"):
    path = revisions_of(path) if kind == "revise" else path
    records = [Record(f"{path}:{n}", row) for n, row in read_jsonl(path)]
  elif kind == "hf":
    records, whole = hf_records(path, data_cfg, split, whole)
  elif kind == "tfds":
    return _tfds_records(path, data_cfg, split)
  elif kind == judge_records.KIND:  # each split its own file: the held-out pairs' prompts are held out
    path = judge_records.pairs_file(path, split)
    return [Record(where, row) for where, row in judge_records.records_of(read_jsonl(path), path)]
  elif kind == "reasoning_gym":
    return reasoning_gym_records(path, data_cfg, held_out=split == "eval")
  else:
    raise UserError(f"prompt records come from jsonl:PATH, hf:PATH, tfds:NAME, reasoning_gym:NAME, revise:DIR, "
                    f"judge_pairs:DIR or {', '.join(GENERATED)}, not {source!r}")
  return records if whole else file_split(records, data_cfg, split)


REVISIONS = "revisions.jsonl"  # a revise run's records, one per prompt


def revisions_of(run: str) -> str:
  """The records file of the finished revise run in `run`."""
  if not RunDir(run).finished:
    raise UserError(f"data.source=revise:{run}: not a finished revise run (no summary.json there)")
  return os.path.join(run, REVISIONS)


HF_FILES = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}  # datasets' builders


def hf_records(path: str, data_cfg, split: str, whole: bool) -> tuple[list[Record], bool]:
  """The rows of a Hugging Face `datasets` table; a DatasetDict gives the split's own rows
  (then whole: True)."""
  datasets = _import("datasets", "hf:PATH needs Hugging Face datasets: pip install -e '.[hf]'")
  datasets.disable_progress_bars()
  files = sorted(glob.glob(path)) if glob.has_magic(path) else [path]  # a hub download's hashed shard names
  if not files or not os.path.exists(files[0]):
    raise UserError(f"data file not found: {path}")
  try:
    if os.path.isdir(files[0]):
      table = datasets.load_from_disk(files[0])
    else:
      kind = HF_FILES.get(os.path.splitext(files[0])[1])
      if kind is None:
        raise UserError(f"hf:{path}: expected a .parquet, .json, .jsonl or .arrow file (or a glob of them) or a save_to_disk folder")
      table = datasets.load_dataset(kind, data_files=files, split="train")
  except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as e:
    raise UserError(f"hf:{path} is not a readable dataset: {str(e).splitlines()[0]}") from None
  if isinstance(table, datasets.DatasetDict):
    name = data_cfg.train_split if split == "train" else data_cfg.eval_split
    if name not in table:
      raise UserError(f"hf:{path} has no split {name!r} (has {sorted(table)}): set data.train_split / eval_split")
    table, whole = table[name], True
  return [Record(f"{path}:{n}", row) for n, row in enumerate(table.to_list(), start=1)], whole


def _generated_records(source: str, data_cfg, held_out: bool) -> list[Record]:
  """The held-out problems (`eval_docs` of them, after the training ones in the sequence), or
  the training problems without any question the held-out ones ask (two digits allow only
  ~13k distinct problems, so a large training set would contain most of them)."""
  if source == ARITHMETIC:
    operations = tuple(data_cfg.get("arithmetic_operations", arithmetic.OPERATIONS))
    if not operations or set(operations) - set(arithmetic.OPERATIONS):
      raise UserError(f"data.arithmetic_operations={operations}: choose among {arithmetic.OPERATIONS}")
    make = lambda count, start, slips=0.0: arithmetic.generate_problems(
        count, data_cfg.seed, start, data_cfg.arithmetic_digits, operations, slips)
  else:
    make = lambda count, start, slips=0.0: tool_arithmetic.generate_problems(
        count, data_cfg.seed, start, data_cfg.arithmetic_digits, slips)
  evaluation = make(data_cfg.eval_docs, data_cfg.embedded_docs)
  if held_out:
    return [Record(f"{source}:{data_cfg.embedded_docs + i}", p) for i, p in enumerate(evaluation)]
  asked = {p["question"] for p in evaluation}
  training = make(data_cfg.embedded_docs, 0, data_cfg.get("arithmetic_slips", 0.0))
  return [Record(f"{source}:{i}", p) for i, p in enumerate(training) if p["question"] not in asked]


def reasoning_gym_records(name: str, data_cfg, held_out: bool) -> list[Record]:
  """`eval_docs` held-out problems of the reasoning-gym task `name` from `data.seed +
  embedded_docs` (a task draws item i from seed + i, so the two sets' seeds never overlap), or
  the `embedded_docs` training ones from `data.seed` without any question the held-out ones ask
  (tasks over a finite vocabulary repeat questions: a fifth of spell_backward's would be
  training words)."""
  evaluation = _reasoning_gym_task(name, data_cfg, data_cfg.eval_docs, data_cfg.seed + data_cfg.embedded_docs)
  asked = set() if held_out else {e["question"] for e in evaluation}
  entries = evaluation if held_out else _reasoning_gym_task(name, data_cfg, data_cfg.embedded_docs, data_cfg.seed)
  return [Record(f"reasoning_gym:{name}:{i}", {"prompt": e["question"], "answer": e["answer"], "entry": e})
          for i, e in enumerate(entries) if e["question"] not in asked]


def _reasoning_gym_task(name: str, data_cfg, size: int, seed: int) -> list[dict]:
  reasoning_gym = _import("reasoning_gym", f"data.source=reasoning_gym:{name} needs the reasoning-gym package: "
                                           "pip install reasoning-gym")
  options = data_cfg.get("reasoning_gym_options", "") or "{}"
  try:
    options = json.loads(options)
    return list(reasoning_gym.create_dataset(name, size=size, seed=seed, **options))
  except Exception as e:  # an unknown task or option: the library's own message
    raise UserError(f"data.source=reasoning_gym:{name} (options {options!r}): {type(e).__name__}: {e}") from None


def prompt_text(record: Record, data_cfg, count_tokens=None) -> str:
  """The record's prompt: `data.prompt_template` filled from its fields (`truncated_fields`
  where `count_tokens`, text -> tokens, is given), else its `data.prompt_field` field."""
  template = data_cfg.get("prompt_template", "")
  if template:
    try:
      fields = truncated_fields(record, data_cfg, count_tokens) if count_tokens else record.fields
      return template.format(**fields)
    except KeyError as e:
      raise UserError(f"{record.where}: data.prompt_template names field {e} (has {sorted(record.fields)})") from None
  return string_field(record.fields, data_cfg.get("prompt_field", "prompt"), *record.where.rsplit(":", 1))


def truncated_fields(record: Record, data_cfg, count_tokens) -> dict:
  """The record's fields with `data.truncate_field` cut, as Huang et al. 2024 cut a TL;DR post,
  until the filled template is at most `data.truncate_tokens` tokens: at the field's last
  `data.truncate_text` ("\\n"), or by its last character where none is left. Off at 0 tokens."""
  budget, name = data_cfg.get("truncate_tokens", 0), data_cfg.get("truncate_field", "")
  if not (budget and name):
    return record.fields
  fields = dict(record.fields)
  if not isinstance(fields.get(name), str):
    raise UserError(f"{record.where}: truncate_field={name!r} is not a text field of the record "
                    f"(has {sorted(fields)})")
  marker = data_cfg.get("truncate_text", "\n")
  while fields[name] and count_tokens(data_cfg.prompt_template.format(**fields)) > budget:
    fields[name] = fields[name][:fields[name].rfind(marker)]  # not found: -1, the last character
  return fields


def sft_pair(record: Record, data_cfg, count_tokens=None) -> tuple:
  """(prompt, response) of an SFT record: the prompt (`prompt_text`) and its
  `data.response_field`; or, with `data.messages_field`, a conversation's messages before its
  last one (a list: data/prompts.py's `as_chat` renders it) and that last, the assistant's."""
  where = record.where.rsplit(":", 1)
  field = data_cfg.get("messages_field", "")
  if not field:
    return prompt_text(record, data_cfg, count_tokens), string_field(record.fields, data_cfg.get("response_field", "response"),
                                                       *where)
  messages = conversation(record.fields, field, *where)
  if len(messages) < 2 or messages[-1]["role"] != "assistant":
    raise UserError(f"{record.where}: data.messages_field={field!r} needs messages ending with the assistant's")
  return messages[:-1], messages[-1]["content"]


def conversation(row: dict, key: str, path: str, number: int) -> list:
  """A field holding chat messages: [{"role": ..., "content": ...}, ...] with string values."""
  value = row.get(key)
  if not (isinstance(value, list) and value and all(
      isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)):
    raise UserError(f"{path}:{number}: field {key!r} is not a list of chat messages (role and content strings)")
  return [{"role": m["role"], "content": m["content"]} for m in value]


ROLE_NAMES = {"user": "Human", "assistant": "Assistant", "system": "System"}
ASSISTANT = "\n\nAssistant:"  # HH's assistant turn, opened


def dialogue_text(messages: list) -> str:
  """Messages as Anthropic HH's text ("\n\nHuman: ...\n\nAssistant: ..."), for a tokenizer
  without a chat template."""
  return "".join(f"\n\n{ROLE_NAMES.get(m['role'], m['role'].title())}: {m['content']}" for m in messages)


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
  with open(path, "rb") as f:
    data = f.read()
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:  # name the line, not the byte offset
    line = data.count(b"\n", 0, e.start) + 1
    raise UserError(f"{path}:{line}: not UTF-8 (byte {data[e.start]:#04x} at offset {e.start})") from None


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


def _import(module: str, hint: str):
  try:
    return importlib.import_module(module)
  except ImportError:
    raise UserError(hint) from None


def _tfds():
  return _import("tensorflow_datasets", "data.source=tfds:... needs tensorflow-datasets: pip install -e '.[tfds]'")


def _tfds_fields(name: str, data_cfg) -> set:
  """The top-level feature names of a locally prepared TFDS dataset."""
  try:
    builder = _tfds().builder(name, data_dir=data_cfg.tfds_data_dir or None)
  except Exception as e:  # TFDS raises many types; the message is what the user needs
    raise UserError(f"TFDS dataset {name!r} is not available locally: {str(e).splitlines()[0]}") from None
  return set(builder.info.features.keys())


def _tfds_examples(name: str, data_cfg, split: str):
  """(split name, numpy examples) of a TFDS dataset the user has prepared locally (nothing is
  downloaded here)."""
  tfds = _tfds()
  tfds_split = data_cfg.train_split if split == "train" else data_cfg.eval_split
  try:
    ds = tfds.load(name, split=tfds_split, download=False, data_dir=data_cfg.tfds_data_dir or None)
  except Exception as e:  # TFDS raises many types; the message is what the user needs
    raise UserError(f"TFDS dataset {name!r} split {tfds_split!r} is not available locally: "
                    f"{str(e).splitlines()[0]}") from None
  return tfds_split, tfds.as_numpy(ds)


def _tfds_texts(name: str, data_cfg, split: str) -> list[str]:
  texts = []
  for example in _tfds_examples(name, data_cfg, split)[1]:
    if data_cfg.text_field not in example:
      raise UserError(f"TFDS {name!r} has no field {data_cfg.text_field!r} (has {sorted(example)})")
    texts.append(example[data_cfg.text_field].decode("utf-8"))
  return texts


def _tfds_records(name: str, data_cfg, split: str) -> list[Record]:
  tfds_split, examples = _tfds_examples(name, data_cfg, split)
  return [Record(f"tfds:{name}[{tfds_split}]:{n}", {k: python_value(v) for k, v in example.items()})
          for n, example in enumerate(examples, start=1)]


def python_value(value):
  """A TFDS (numpy) feature value as JSON would give it: bytes decoded, arrays as lists."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, dict):
    return {k: python_value(v) for k, v in value.items()}
  if isinstance(value, np.ndarray):
    return [python_value(v) for v in value] if value.dtype == object else value.tolist()
  return value.item() if isinstance(value, np.generic) else value
