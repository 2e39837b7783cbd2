"""Prompts: the openings every stage cuts from documents, encoded as the sampler wants them,
and the RL stage's batches of them.

SFT's samples, the reward stage's generated pairs, the RL stage's training and evaluation
prompts and DPO's evaluation prompts all cut document i the same way (`prompt_rng`).
"""

import random
import types
from typing import Mapping, NamedTuple

from absl import logging
import jax
import numpy as np

from rlhf_jax import sharding
from rlhf_jax.data import sources
from rlhf_jax.errors import UserError


class Prompts(NamedTuple):
  texts: list  # the prompt strings
  tokens: np.ndarray  # [n, len] left-padded, BOS first
  mask: np.ndarray
  truncated: int = 0  # prompts longer than the room for them, cut from the left
  columns: Mapping = types.MappingProxyType({})  # each record's other fields: name -> [n] values

  def of_rows(self, prompt_ids, repeat: int = 1) -> tuple[list, dict]:
    """(texts, columns) of each prompt repeated `repeat` times, next to each other as a group's
    samples are: what host reward functions read for those rows."""
    index = [i for i in prompt_ids for _ in range(repeat)]
    return [self.texts[i] for i in index], {name: [values[i] for i in index] for name, values in self.columns.items()}


def prompt_rng(seed: int, i: int) -> random.Random:
  """Where document i is cut into a prompt: fixed by (seed, i), so every stage agrees."""
  return random.Random(f"prompt:{seed}:{i}")


def openings(docs, data_cfg, seed: int) -> list:
  """The prompt cut from each document."""
  return [sources.split_opening(d, data_cfg, prompt_rng(seed, i))[0] for i, d in enumerate(docs)]


def encode_prompts(texts, tokenizer, max_len: int, bucket: int = 1) -> Prompts:
  """BOS + prompt, cut from the left to max_len, left-padded (as the sampler expects) to a
  multiple of `bucket` tokens (at most max_len): a few widths, so a few compilations."""
  full = [[tokenizer.bos_id, *tokenizer.encode(t)] for t in texts]
  ids = [x[-max_len:] for x in full]
  width = min(max_len, -(-max(len(x) for x in ids) // bucket) * bucket)
  tokens = np.full((len(ids), width), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(ids), width), np.int32)
  for row, x in enumerate(ids):
    tokens[row, width - len(x):] = x
    mask[row, width - len(x):] = 1
  return Prompts(list(texts), tokens, mask, sum(len(x) > max_len for x in full))


def as_chat(texts: list, tokenizer, data_cfg, tools: list | None = None) -> list:
  """With `data.chat_template`, each prompt as a user message in the HF tokenizer's chat template
  (listing `tools`, JSON schemas, where given); a prompt that is a list of messages (SFT's
  `data.messages_field`) rendered with its assistant turn opened, or without the template as
  Anthropic HH's text."""
  if not data_cfg.get("chat_template"):
    return [t if isinstance(t, str) else sources.dialogue_text(t) + sources.ASSISTANT for t in texts]
  if not hasattr(tokenizer, "chat_prompt"):
    raise UserError(f"data.chat_template=True needs a Hugging Face tokenizer with a chat template, not {tokenizer!r}")
  return [tokenizer.chat_prompt(t, tools) if tools else tokenizer.chat_prompt(t) for t in texts]



def prompt_texts(data_cfg, split: str, seed: int, limit: int | None = None, tokenizer=None) -> tuple[list, dict]:
  """(the split's first `limit` prompts, their records' other fields as columns): records'
  prompts (data.prompt_field, or data.prompt_template filled: its `data.truncate_field` cut to
  fit where a `tokenizer` counts), or the openings of documents."""
  if not sources.is_record_source(data_cfg):
    return openings(sources.load_documents(data_cfg, split)[:limit], data_cfg, seed), {}
  records = sources.load_records(data_cfg, split)[:limit]
  names = sorted({name for r in records for name in r.fields} - {data_cfg.prompt_field})
  count = token_counter(tokenizer)
  return [sources.prompt_text(r, data_cfg, count) for r in records], {name: [r.fields.get(name) for r in records]
                                                              for name in names}


def token_counter(tokenizer):
  """text -> its number of tokens (what `data.truncate_tokens` counts), or None."""
  return None if tokenizer is None else lambda text: len(tokenizer.encode(text))


def prompt_set(cfg, tokenizer, split: str, tools: list | None = None) -> Prompts:
  """The split's prompts (`eval_prompts` of them for eval), BOS first, left-padded to one
  width: records' prompts, used whole, with their other fields as columns; or the openings of
  documents. `tools`: the JSON schemas a chat template lists in each prompt."""
  texts, columns = prompt_texts(cfg.data, split, cfg.seed, cfg.eval_prompts if split == "eval" else None, tokenizer)
  prompts = encode_prompts(as_chat(texts, tokenizer, cfg.data, tools), tokenizer, cfg.max_prompt_len)
  prompts = prompts._replace(columns=columns)
  if prompts.truncated:
    logging.warning("%d of %d %s prompts are longer than max_prompt_len=%d tokens: cut from the left",
                    prompts.truncated, len(texts), split, cfg.max_prompt_len)
  return prompts


def prompt_batch(prompts: Prompts, step: int, batch_size: int, mesh) -> dict:
  """Batch `step` of a fixed per-epoch shuffle of the training prompts (a pure function of
  step); each process puts its own rows of it on its devices, and keeps their indices in
  `prompts` (`ids`, on the host: what host rewards look the texts and columns up by)."""
  n = len(prompts.texts)
  epoch, offset = divmod(step * batch_size, n)
  order = np.random.default_rng([epoch]).permutation(n)
  ids = order[(offset + np.arange(batch_size)) % n]
  if batch_size % jax.process_count():
    raise UserError(f"{batch_size} prompts per iteration do not split over {jax.process_count()} processes")
  mine = ids.reshape(jax.process_count(), -1)[jax.process_index()]
  return {**sharding.put_batch({"tokens": prompts.tokens[mine], "mask": prompts.mask[mine]}, mesh), "ids": mine}


def warn_about_prompt_sets(train: Prompts, evaluation: Prompts, per_iteration: int) -> None:
  """Warns when a records file holds fewer training prompts than an iteration draws (they are
  repeated within it) or when evaluation prompts are training prompts too (not held out)."""
  if len(train.texts) < per_iteration:
    logging.warning("%d training prompts for %d per iteration: every iteration repeats them", len(train.texts),
                    per_iteration)
  seen = set(train.texts)
  overlap = [t for t in evaluation.texts if t in seen]
  if overlap:
    logging.warning("%d of the %d evaluation prompts are training prompts too (the first: %r): the evaluation "
                    "is not held out", len(overlap), len(evaluation.texts), overlap[0])
