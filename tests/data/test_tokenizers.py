"""Tests for rlhf_jax.data.tokenizers: exact round trips, specials, persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlhf_jax.data.corpus import generate_reviews
from rlhf_jax.data.tokenizers import (
    ByteTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
)

# Hand-made strings that trip up normalising or whitespace-collapsing tokenizers.
TRICKY_STRINGS = [
    "",
    " ",
    "   ",
    "a",
    "Hello, world!",
    "  leading and trailing spaces  ",
    "many     spaces   between",
    "tabs\tand\t\ttabs",
    "line one\nline two\n\nline four\n",
    "\n",
    "\r\n windows line end",
    "digits 0123456789 and 3.14159 and 1,000,000",
    "accents: caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m",
    "combining: e\u0301 vs \u00e9",  # NFC/NFD forms must both survive
    "full width \uff21\uff22\uff23 and ligature \ufb01",  # NFKC would change these
    "CJK: \u6f22\u5b57\u304b\u306a\u30ab\u30ca \ud55c\uad6d\uc5b4",
    "emoji: \U0001f600\U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "sentencepiece space mark \u2581 literal \u2581\u2581",
    "control \x00\x01\x7f chars",
    "right-to-left \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "The acting was wonderful, but the plot was boring.",
]


def random_unicode_strings(count: int, seed: int = 0, max_len: int = 40) -> list[str]:
  """Random strings over all of Unicode except surrogates (which UTF-8 cannot hold)."""
  rng = np.random.default_rng(seed)
  strings = []
  for _ in range(count):
    # Mix ASCII-heavy and anywhere-in-Unicode code points.
    ascii_part = rng.integers(0, 128, size=rng.integers(0, max_len))
    wide_part = rng.integers(0, 0x110000, size=rng.integers(0, max_len // 2))
    code_points = rng.permutation(np.concatenate([ascii_part, wide_part]))
    strings.append("".join(chr(int(c)) for c in code_points if not 0xD800 <= c < 0xE000))
  return strings


@pytest.fixture(scope="module")
def training_texts() -> list[str]:
  return generate_reviews(2000, seed=0)


@pytest.fixture(scope="module")
def sp_tokenizer(training_texts) -> SentencePieceTokenizer:
  return SentencePieceTokenizer.train(training_texts, vocab_size=512)


# --- byte tokenizer ---------------------------------------------------------------


def test_byte_special_ids_and_vocab():
  tok = ByteTokenizer()
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (256, 257, 258, 259)
  assert tok.name == "byte"
  assert isinstance(tok, Tokenizer)


@pytest.mark.parametrize("text", TRICKY_STRINGS)
def test_byte_round_trip_tricky(text):
  tok = ByteTokenizer()
  ids = tok.encode(text)
  assert ids == list(text.encode("utf-8"))
  assert tok.decode(ids) == text


def test_byte_round_trip_random_unicode():
  tok = ByteTokenizer()
  for text in random_unicode_strings(300, seed=1):
    assert tok.decode(tok.encode(text)) == text


def test_byte_decode_skips_specials_and_out_of_range():
  tok = ByteTokenizer()
  ids = [tok.bos_id, *tok.encode("Hi"), tok.pad_id, 999, -1, tok.eos_id, *tok.encode("!")]
  assert tok.decode(ids) == "Hi!"
  assert tok.decode(np.array(ids, dtype=np.int32)) == "Hi!"
  assert tok.decode(np.array(ids, dtype=np.int64)) == "Hi!"


def test_byte_decode_replaces_invalid_utf8():
  tok = ByteTokenizer()
  truncated = tok.encode("\u00e9")[:1]  # first byte of a two-byte character
  assert tok.decode(tok.encode("ok") + truncated) == "ok\ufffd"


def test_byte_save_and_load(tmp_path):
  ByteTokenizer().save(str(tmp_path))
  assert json.loads((tmp_path / "tokenizer.json").read_text()) == {"kind": "byte"}
  loaded = load_tokenizer(str(tmp_path))
  assert isinstance(loaded, ByteTokenizer)
  assert loaded.encode("caf\u00e9") == ByteTokenizer().encode("caf\u00e9")


# --- sentencepiece tokenizer ------------------------------------------------------


def test_sp_vocab_and_special_ids(sp_tokenizer):
  tok = sp_tokenizer
  assert tok.name == "sentencepiece"
  assert isinstance(tok, Tokenizer)
  assert 259 < tok.vocab_size <= 512  # >256 byte pieces + 4 specials, capped by the request
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 3)


def test_sp_round_trips_corpus_text_exactly(sp_tokenizer):
  held_out = generate_reviews(200, seed=0, start=10_000)
  for text in held_out:
    assert sp_tokenizer.decode(sp_tokenizer.encode(text)) == text
  multi_document = "\n".join(held_out[:5]) + "\n"
  assert sp_tokenizer.decode(sp_tokenizer.encode(multi_document)) == multi_document


@pytest.mark.parametrize("text", TRICKY_STRINGS)
def test_sp_round_trip_tricky(sp_tokenizer, text):
  assert sp_tokenizer.decode(sp_tokenizer.encode(text)) == text


def test_sp_round_trip_random_unicode(sp_tokenizer):
  for text in random_unicode_strings(300, seed=2):
    assert sp_tokenizer.decode(sp_tokenizer.encode(text)) == text


def test_sp_encode_adds_no_specials_and_stays_in_vocab(sp_tokenizer):
  ids = sp_tokenizer.encode("I watched it.\nIt was great!")
  specials = {sp_tokenizer.pad_id, sp_tokenizer.bos_id, sp_tokenizer.eos_id}
  assert not specials & set(ids)
  assert all(0 <= token_id < sp_tokenizer.vocab_size for token_id in ids)


def test_sp_newline_is_its_own_piece(sp_tokenizer):
  # Training splits texts into lines, so "\n" is added as a user-defined symbol
  # rather than left to byte fallback.
  ids = sp_tokenizer.encode("\n")
  assert len(ids) == 1 and sp_tokenizer.id_to_piece(ids[0]) == "\n"


def test_sp_compresses_corpus_text(sp_tokenizer):
  held_out = generate_reviews(200, seed=0, start=20_000)
  num_tokens = sum(len(sp_tokenizer.encode(text)) for text in held_out)
  num_bytes = sum(len(text.encode("utf-8")) for text in held_out)
  assert num_tokens < num_bytes / 1.8


def test_sp_decode_skips_specials_and_out_of_range(sp_tokenizer):
  tok = sp_tokenizer
  ids = tok.encode("Great food.")
  noisy = [tok.bos_id, *ids, tok.pad_id, tok.vocab_size, 10**6, -5, tok.eos_id]
  assert tok.decode(noisy) == "Great food."
  assert tok.decode(np.array(noisy, dtype=np.int64)) == "Great food."


def test_sp_training_is_deterministic(training_texts, sp_tokenizer):
  again = SentencePieceTokenizer.train(training_texts, vocab_size=512)
  sample = generate_reviews(20, seed=1)
  assert [again.encode(t) for t in sample] == [sp_tokenizer.encode(t) for t in sample]


def test_sp_save_load_gives_identical_encodings(sp_tokenizer, tmp_path):
  sp_tokenizer.save(str(tmp_path))
  config = json.loads((tmp_path / "tokenizer.json").read_text())
  assert config["kind"] == "sentencepiece"
  assert (tmp_path / "tokenizer.model").is_file()
  for loaded in (SentencePieceTokenizer.load(str(tmp_path)), load_tokenizer(str(tmp_path))):
    assert isinstance(loaded, SentencePieceTokenizer)
    assert loaded.vocab_size == sp_tokenizer.vocab_size
    for text in TRICKY_STRINGS + generate_reviews(20, seed=3):
      assert loaded.encode(text) == sp_tokenizer.encode(text)


# --- factory and loader errors ----------------------------------------------------


def test_build_tokenizer_dispatches(training_texts):
  assert isinstance(build_tokenizer("byte"), ByteTokenizer)
  tok = build_tokenizer("sentencepiece", training_texts[:500], vocab_size=400)
  assert isinstance(tok, SentencePieceTokenizer)
  assert tok.vocab_size <= 400


def test_build_tokenizer_rejects_unknown_kind():
  with pytest.raises(ValueError, match="byte.*sentencepiece") as info:
    build_tokenizer("wordpiece")
  assert "\n" not in str(info.value)


def test_build_sentencepiece_requires_vocab_size(training_texts):
  with pytest.raises(ValueError, match="vocab_size"):
    build_tokenizer("sentencepiece", training_texts[:10])


def test_too_small_vocab_raises_value_error(training_texts):
  with pytest.raises(ValueError, match="sentencepiece training failed"):
    SentencePieceTokenizer.train(training_texts[:100], vocab_size=100)


def test_load_missing_directory_raises(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(ValueError, match="nowhere") as info:
    load_tokenizer(str(missing))
  assert "\n" not in str(info.value)


def test_load_garbled_config_raises(tmp_path):
  (tmp_path / "tokenizer.json").write_text("{not json")
  with pytest.raises(ValueError, match="tokenizer.json"):
    load_tokenizer(str(tmp_path))
  (tmp_path / "tokenizer.json").write_text("[1, 2]")
  with pytest.raises(ValueError, match="kind"):
    load_tokenizer(str(tmp_path))


def test_load_unknown_kind_raises(tmp_path):
  (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "wordpiece"}))
  with pytest.raises(ValueError, match="wordpiece"):
    load_tokenizer(str(tmp_path))


def test_load_garbled_sentencepiece_model_raises(tmp_path):
  (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "sentencepiece"}))
  (tmp_path / "tokenizer.model").write_bytes(b"definitely not a model")
  with pytest.raises(ValueError, match="tokenizer.model"):
    load_tokenizer(str(tmp_path))
  (tmp_path / "tokenizer.model").unlink()
  with pytest.raises(ValueError, match="tokenizer.model"):
    load_tokenizer(str(tmp_path))
