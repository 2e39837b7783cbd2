"""Data sources: embedded splits, text and JSONL files with clear errors, TFDS."""

import json

import pytest

from configs import common
from rlhf_jax.data import sources
from rlhf_jax.errors import UserError


def data_cfg(**overrides):
  cfg = common.base_config("pretrain", "tiny").data
  cfg.update(dict(embedded_docs=50, eval_docs=10, **overrides))
  return cfg


def test_embedded_splits_are_disjoint_and_deterministic():
  train, held_out = sources.load_documents(data_cfg(), "train"), sources.load_documents(data_cfg(), "eval")
  assert len(train) == 50 and len(held_out) == 10
  assert not set(train) & set(held_out)
  assert train == sources.load_documents(data_cfg(), "train")


def test_pairs_split_a_document_at_a_word():
  for doc, (prompt, response) in zip(sources.load_documents(data_cfg(), "train"),
                                     sources.load_pairs(data_cfg(), "train")):
    assert prompt + response == doc and response.startswith(" ")
    assert 2 <= len(prompt.split(" ")) <= 6


def test_text_file_paragraphs_and_held_out_tail(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text("\n\n".join(f"Paragraph {i}.\nSecond line." for i in range(20)))
  cfg = data_cfg(source=f"text:{path}", eval_fraction=0.1)
  train, held_out = sources.load_documents(cfg, "train"), sources.load_documents(cfg, "eval")
  assert len(train) == 18 and held_out == ["Paragraph 18.\nSecond line.", "Paragraph 19.\nSecond line."]


def test_jsonl_sft_pairs(tmp_path):
  path = tmp_path / "sft.jsonl"
  path.write_text("\n".join(json.dumps({"prompt": f"Q{i}", "response": f" A{i}"}) for i in range(10)))
  pairs = sources.load_pairs(data_cfg(source=f"jsonl:{path}"), "train")
  assert pairs[0] == ("Q0", " A0") and len(pairs) == 9


@pytest.mark.parametrize("line, message", [
    ('{"text": "fine"}\n{"text": broken}', r"corpus.jsonl:2: malformed JSON"),
    ('{"text": "fine"}\n["a list"]', r"corpus.jsonl:2: expected a JSON object"),
    ('{"text": "fine"}\n{"body": "x"}', r"corpus.jsonl:2: missing string field 'text'"),
])
def test_malformed_jsonl_names_file_and_line(tmp_path, line, message):
  path = tmp_path / "corpus.jsonl"
  path.write_text(line)
  with pytest.raises(UserError, match=message):
    sources.load_documents(data_cfg(source=f"jsonl:{path}"), "train")


def test_missing_file_and_unknown_source():
  with pytest.raises(UserError, match="data file not found: /nope.txt"):
    sources.load_documents(data_cfg(source="text:/nope.txt"), "train")
  with pytest.raises(UserError, match="expected embedded"):
    sources.load_documents(data_cfg(source="parquet:/x"), "train")


def test_tfds_dataset():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    docs = sources.load_documents(data_cfg(source="tfds:imdb_reviews"), "train")
  assert len(docs) == 6 and all(isinstance(d, str) and d for d in docs)
