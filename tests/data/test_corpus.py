"""Tests for the embedded review corpus (rlhf_jax.data.corpus)."""

from __future__ import annotations

import collections
import hashlib
import os
import pathlib
import re
import subprocess
import sys

import pytest

from rlhf_jax.data import corpus
from rlhf_jax.data.corpus import generate_labeled_reviews, generate_reviews, sentiment_words

NUM_DOCS = 2000
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def labeled_docs() -> list[tuple[str, str]]:
  return generate_labeled_reviews(NUM_DOCS, seed=0)


@pytest.fixture(scope="module")
def docs(labeled_docs) -> list[str]:
  return [text for text, _ in labeled_docs]


def _words(text: str) -> list[str]:
  return re.findall(r"[a-z]+", text.lower())


def _word_label(text: str) -> str:
  """Sentiment read off the exported word sets alone."""
  positive, negative = sentiment_words()
  words = set(_words(text))
  has_positive, has_negative = bool(words & positive), bool(words & negative)
  return {
      (True, False): "positive",
      (False, True): "negative",
      (True, True): "mixed",
      (False, False): "neutral"
  }[(has_positive, has_negative)]


def _opening(text: str, num_words: int = 3) -> str:
  return " ".join(text.split()[:num_words])


# --- determinism and splitting ---------------------------------------------------


def test_same_seed_gives_same_documents():
  assert generate_reviews(50, seed=7) == generate_reviews(50, seed=7)


def test_different_seeds_give_different_documents():
  assert generate_reviews(50, seed=0) != generate_reviews(50, seed=1)


def test_start_slices_the_same_sequence():
  assert generate_reviews(10, seed=3, start=5) == generate_reviews(20, seed=3)[5:15]


def test_document_depends_only_on_seed_and_index():
  assert generate_reviews(1, seed=0, start=123) == [generate_reviews(200, seed=0)[123]]


def test_disjoint_ranges_give_disjoint_splits():
  train = set(generate_reviews(500, seed=0))
  evaluation = set(generate_reviews(200, seed=0, start=500))
  assert len(train & evaluation) <= 2  # only chance collisions of short templates


def test_stable_across_processes_with_different_hash_seeds():
  # Guards against anything depending on Python's per-process str hashing.
  script = ("import hashlib; from rlhf_jax.data.corpus import generate_reviews; "
            "print(hashlib.sha256('|'.join(generate_reviews(30, seed=5)).encode()).hexdigest())")
  digests = set()
  for hash_seed in ("1", "2"):
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", script],
                            capture_output=True,
                            text=True,
                            check=True,
                            env=env,
                            cwd=REPO_ROOT)
    digests.add(result.stdout.strip())
  assert len(digests) == 1
  in_process = generate_reviews(30, seed=5)
  assert digests == {hashlib.sha256("|".join(in_process).encode()).hexdigest()}


def test_zero_documents_and_bad_arguments():
  assert generate_reviews(0) == []
  with pytest.raises(ValueError):
    generate_reviews(-1)
  with pytest.raises(ValueError):
    generate_reviews(3, start=-2)


# --- shape of each document -------------------------------------------------------


def test_documents_are_plain_ascii_sentences(docs):
  for text in docs:
    assert text.isascii(), text
    assert "\n" not in text and "\t" not in text, text
    assert text[0].isupper(), text
    assert text[-1] in ".!?", text
    assert "  " not in text and text == text.strip(), text


def test_document_sizes_are_in_range(docs):
  lengths = [len(text) for text in docs]
  assert min(lengths) >= 120 and max(lengths) <= 400
  assert 140 <= sum(lengths) / len(lengths) <= 300


def test_documents_have_two_to_five_sentences(docs):
  for text in docs:
    sentences = re.findall(r"[.!?](?= |$)", text)
    assert 2 <= len(sentences) <= 5, text


def test_nearly_all_documents_are_distinct(docs):
  assert len(set(docs)) >= 0.995 * len(docs)


def test_vocabulary_is_moderate_but_varied(docs):
  vocabulary = {word for text in docs for word in _words(text)}
  assert 250 <= len(vocabulary) <= 800


def test_covers_many_domains(docs):
  assert len(corpus.DOMAINS) >= 6
  # An aspect word specific to each of several domains shows up somewhere.
  words = {word for text in docs for word in _words(text)}
  for aspect_word in ("acting", "writing", "service", "breakfast", "vocals", "gameplay", "coffee",
                      "setlist", "battery", "trails"):
    assert aspect_word in words, aspect_word


# --- sentiment ----------------------------------------------------------------------


def test_sentiment_word_sets_are_disjoint_and_common():
  positive, negative = sentiment_words()
  assert not positive & negative
  assert {"great", "wonderful", "excellent", "loved", "enjoyed"} <= positive
  assert {"awful", "terrible", "boring", "hated", "disappointing"} <= negative


def test_both_polarities_occur(docs):
  positive, negative = sentiment_words()
  counts = collections.Counter(word for text in docs for word in _words(text))
  assert sum(counts[word] for word in positive) > NUM_DOCS
  assert sum(counts[word] for word in negative) > NUM_DOCS
  assert len({word for word in positive if counts[word]}) >= 20
  assert len({word for word in negative if counts[word]}) >= 20


def test_labels_agree_with_the_exported_word_sets(labeled_docs):
  for text, label in labeled_docs:
    assert _word_label(text) == label, (label, text)


def test_sentiment_mix_matches_design(labeled_docs):
  counts = collections.Counter(label for _, label in labeled_docs)
  fractions = {
      label: counts[label] / NUM_DOCS for label in ("positive", "negative", "mixed", "neutral")
  }
  assert abs(fractions["positive"] - 0.40) < 0.05, fractions
  assert abs(fractions["negative"] - 0.40) < 0.05, fractions
  assert abs(fractions["mixed"] - 0.15) < 0.04, fractions
  assert abs(fractions["neutral"] - 0.05) < 0.025, fractions


def test_openings_are_shared_across_sentiments(labeled_docs):
  labels_by_opening = collections.defaultdict(set)
  for text, label in labeled_docs:
    labels_by_opening[_opening(text)].add(label)
  shared = [
      opening for opening, labels in labels_by_opening.items() if {"positive", "negative"} <= labels
  ]
  assert len(shared) >= 20
  # Most polar documents start with words that also open a document of the other polarity.
  polar = [(text, label) for text, label in labeled_docs if label in ("positive", "negative")]
  ambiguous = sum(1 for text, _ in polar if _opening(text) in shared)
  assert ambiguous / len(polar) >= 0.8


def test_openings_carry_no_sentiment_words(docs):
  positive, negative = sentiment_words()
  for text in docs:
    assert not set(_words(_opening(text, 4))) & (positive | negative), text


def test_vader_agrees_with_designed_polarity_when_installed(labeled_docs):
  vader = pytest.importorskip("vaderSentiment.vaderSentiment")
  analyzer = vader.SentimentIntensityAnalyzer()
  for text, label in labeled_docs[:300]:
    compound = analyzer.polarity_scores(text)["compound"]
    if label == "positive":
      assert compound > 0.05, text
    elif label == "negative":
      assert compound < -0.05, text
