"""Tokenizers: a dependency-free byte tokenizer and an in-memory SentencePiece one.

Both satisfy the :class:`Tokenizer` protocol and round-trip any Unicode text
exactly (``decode(encode(s)) == s``), which the rest of the codebase relies on
when it turns model samples back into text for reward functions.

On disk a tokenizer is a directory holding ``tokenizer.json`` (``{"kind": ...}``)
plus whatever files that kind needs; :func:`load_tokenizer` dispatches on kind. It also
loads a Hugging Face model or tokenizer directory (rlhf_jax/data/hf_tokenizer.py), kind "hf"
once saved in a run.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

from rlhf_jax.data import hf_tokenizer

CONFIG_FILE = "tokenizer.json"
SENTENCEPIECE_MODEL_FILE = "tokenizer.model"
TOKENIZER_KINDS = ("byte", "sentencepiece")

# SentencePiece writes spaces as U+2581 and turns every U+2581 back into a space
# on decode, so a literal U+2581 in the input must bypass that (see encode).
_WHITESPACE_MARK = "\u2581"


@runtime_checkable
class Tokenizer(Protocol):
  """What the models, data pipelines and samplers need from a tokenizer."""

  name: str
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int
  stop_ids: tuple  # every id a response may end on, eos_id first (sampling.is_stop)

  def encode(self, text: str) -> list[int]:
    """Token ids for ``text``, without BOS/EOS."""
    ...

  def decode(self, ids: Iterable[int]) -> str:
    """Text for ``ids``, skipping special and out-of-range ids."""
    ...

  def save(self, directory: str) -> None:
    """Write the tokenizer so :func:`load_tokenizer` can rebuild it."""
    ...


def _write_config(directory: str, config: dict) -> None:
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as handle:
    json.dump(config, handle, indent=2, sort_keys=True)


def _as_int_list(ids: Iterable[int]) -> list[int]:
  # Accepts lists, tuples and numpy arrays of any integer dtype.
  return [int(token_id) for token_id in ids]


class ByteTokenizer:
  """UTF-8 bytes as tokens: ids 0..255 are bytes, then PAD, BOS, EOS."""

  name = "byte"

  def __init__(self) -> None:
    self.pad_id = 256
    self.bos_id = 257
    self.eos_id = 258
    self.vocab_size = 259

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Iterable[int]) -> str:
    # Everything that is not a byte (specials, out-of-range ids a sampler
    # may produce) is dropped; a cut-off multi-byte character becomes U+FFFD.
    data = bytes(token_id for token_id in _as_int_list(ids) if 0 <= token_id < 256)
    return data.decode("utf-8", errors="replace")

  @property
  def stop_ids(self) -> tuple:
    return (self.eos_id,)

  def save(self, directory: str) -> None:
    _write_config(directory, {"kind": self.name})

  def __repr__(self) -> str:
    return "ByteTokenizer()"


def _training_lines(texts: Iterable[str]) -> Iterator[str]:
  # SentencePiece trains on lines; "\n" itself is a user-defined symbol.
  for text in texts:
    for line in text.split("\n"):
      if line:
        yield line


def _trainer_options(vocab_size: int, model_type: str) -> dict:
  """Options that make the model round-trip any text and train quietly."""
  return {
      "vocab_size": vocab_size,
      "model_type": model_type,
      # Exactness: no Unicode normalisation, keep every space, never emit <unk>.
      "normalization_rule_name": "identity",
      "add_dummy_prefix": False,
      "remove_extra_whitespaces": False,
      "byte_fallback": True,
      "character_coverage": 1.0,
      "split_digits": True,
      "user_defined_symbols": ["\n"],
      # A small corpus may not support the requested size; take what it gives.
      "hard_vocab_limit": False,
      "pad_id": 0,
      "unk_id": 1,
      "bos_id": 2,
      "eos_id": 3,
      # Deterministic and cheap: first N lines, no shuffling, one thread.
      "input_sentence_size": 200_000,
      "shuffle_input_sentence": False,
      "max_sentence_length": 16_384,
      "num_threads": 1,
      "minloglevel": 2,
  }


class SentencePieceTokenizer:
  """A SentencePiece model (BPE or unigram) held in memory, trained on our corpus."""

  name = "sentencepiece"

  def __init__(self, model_proto: bytes) -> None:
    import sentencepiece  # deferred: the byte tokenizer must work without it

    self._model_proto = bytes(model_proto)
    self._processor = sentencepiece.SentencePieceProcessor(model_proto=self._model_proto)
    self.vocab_size = int(self._processor.get_piece_size())
    self.pad_id = int(self._processor.pad_id())
    self.bos_id = int(self._processor.bos_id())
    self.eos_id = int(self._processor.eos_id())
    self._mark_ids = [
        self._processor.piece_to_id(f"<0x{byte:02X}>") for byte in _WHITESPACE_MARK.encode("utf-8")
    ]

  @classmethod
  def train(cls,
            texts: Iterable[str],
            vocab_size: int,
            model_type: str = "bpe") -> "SentencePieceTokenizer":
    """Train in memory on ``texts``; the vocabulary may come out smaller than asked."""
    import sentencepiece

    writer = io.BytesIO()
    try:
      sentencepiece.SentencePieceTrainer.train(sentence_iterator=_training_lines(texts),
                                               model_writer=writer,
                                               **_trainer_options(vocab_size, model_type))
    except RuntimeError as error:
      message = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
      raise ValueError(f"sentencepiece training failed (vocab_size={vocab_size}, "
                       f"model_type={model_type!r}): {message}") from error
    return cls(writer.getvalue())

  @classmethod
  def load(cls, directory: str) -> "SentencePieceTokenizer":
    path = os.path.join(directory, SENTENCEPIECE_MODEL_FILE)
    try:
      with open(path, "rb") as handle:
        return cls(handle.read())
    except (OSError, RuntimeError) as error:
      reason = str(error).strip() or type(error).__name__
      raise ValueError(f"cannot load sentencepiece model {path}: {reason}") from error

  def encode(self, text: str) -> list[int]:
    # Encode around literal U+2581 and spell each one as its UTF-8 byte
    # pieces, which decode back to U+2581 rather than to a space.
    parts = text.split(_WHITESPACE_MARK)
    ids = list(self._processor.encode(parts[0]))
    for part in parts[1:]:
      ids.extend(self._mark_ids)
      ids.extend(self._processor.encode(part))
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    specials = {self.pad_id, self.bos_id, self.eos_id}
    kept = [
        token_id for token_id in _as_int_list(ids)
        if 0 <= token_id < self.vocab_size and token_id not in specials
    ]
    return self._processor.decode(kept)

  @property
  def stop_ids(self) -> tuple:
    return (self.eos_id,)

  def id_to_piece(self, token_id: int) -> str:
    """The vocabulary entry for ``token_id`` (handy for inspecting a model)."""
    return self._processor.id_to_piece(int(token_id))

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, SENTENCEPIECE_MODEL_FILE), "wb") as handle:
      handle.write(self._model_proto)
    _write_config(directory, {
        "kind": self.name,
        "model_file": SENTENCEPIECE_MODEL_FILE,
        "vocab_size": self.vocab_size
    })

  def __repr__(self) -> str:
    return f"SentencePieceTokenizer(vocab_size={self.vocab_size})"


def build_tokenizer(kind: str, texts: Iterable[str] = (), vocab_size: int = 0) -> Tokenizer:
  """A fresh tokenizer of ``kind``; "sentencepiece" trains on ``texts``."""
  if kind == "byte":
    return ByteTokenizer()
  if kind == "sentencepiece":
    if vocab_size <= 0:
      raise ValueError(f"sentencepiece tokenizer needs vocab_size > 0, got {vocab_size}")
    return SentencePieceTokenizer.train(texts, vocab_size)
  raise ValueError(f"unknown tokenizer kind {kind!r}; "
                   f"choose one of: {', '.join(TOKENIZER_KINDS)}")


def _read_config(directory: str) -> dict:
  path = os.path.join(directory, CONFIG_FILE)
  try:
    with open(path, encoding="utf-8") as handle:
      config = json.load(handle)
  except (OSError, ValueError) as error:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    raise ValueError(f"cannot read tokenizer config {path}: {reason}") from error
  if not isinstance(config, dict) or "kind" not in config:
    raise ValueError(f"tokenizer config {path} has no 'kind' field")
  return config


def load_tokenizer(directory: str) -> Tokenizer:
  """Rebuild the tokenizer that ``save(directory)`` wrote, or a Hugging Face directory's."""
  if hf_tokenizer.is_hf_tokenizer_dir(directory):
    return hf_tokenizer.HFTokenizer(directory)
  config = _read_config(directory)
  kind = config["kind"]
  if kind == "byte":
    return ByteTokenizer()
  if kind == "sentencepiece":
    return SentencePieceTokenizer.load(directory)
  if kind == hf_tokenizer.HFTokenizer.name:
    return hf_tokenizer.HFTokenizer.load(directory, config)
  path = os.path.join(directory, CONFIG_FILE)
  raise ValueError(f"unknown tokenizer kind {kind!r} in {path}; "
                   f"choose one of: {', '.join(TOKENIZER_KINDS)}")


__all__ = [
    "Tokenizer", "ByteTokenizer", "SentencePieceTokenizer", "build_tokenizer", "load_tokenizer",
    "TOKENIZER_KINDS"
]
