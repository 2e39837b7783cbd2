"""Preference pairs: file formats, the HH prompt split, and Bradley-Terry labelling."""

import json

import ml_collections
import numpy as np
import pytest

from rlhf_jax.data import preferences
from rlhf_jax.errors import UserError


def pref_cfg(source):
  return ml_collections.ConfigDict(dict(source=source, eval_fraction=0.25, train_split="train", eval_split="test"))


def test_hh_dialogues_split_at_the_last_shared_assistant_turn():
  chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A joke?\n\nAssistant: Why did the chicken..."
  rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A joke?\n\nAssistant: No."
  prompt, good, bad = preferences.split_shared_prefix(chosen, rejected)
  assert prompt == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A joke?\n\nAssistant:"
  assert good == " Why did the chicken..." and bad == " No."


def test_jsonl_and_hh_files(tmp_path):
  rows = [{"prompt": f"P{i}", "chosen": " yes", "rejected": " no"} for i in range(8)]
  (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
  train = preferences.load_pairs(pref_cfg(f"jsonl:{tmp_path / 'p.jsonl'}"), "train")
  held_out = preferences.load_pairs(pref_cfg(f"jsonl:{tmp_path / 'p.jsonl'}"), "eval")
  assert len(train) == 6 and held_out == [("P6", " yes", " no"), ("P7", " yes", " no")]
  hh = [{"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"}] * 4
  (tmp_path / "hh.jsonl").write_text("\n".join(json.dumps(r) for r in hh))
  assert preferences.load_pairs(pref_cfg(f"hh:{tmp_path / 'hh.jsonl'}"), "train")[0] == (
      "\n\nHuman: q\n\nAssistant:", " good", " bad")


def test_bad_preference_files_are_clear_errors(tmp_path):
  (tmp_path / "p.jsonl").write_text('{"prompt": "a", "chosen": "b"}\n')
  with pytest.raises(UserError, match=r"p.jsonl:1: missing string field 'rejected'"):
    preferences.load_pairs(pref_cfg(f"jsonl:{tmp_path / 'p.jsonl'}"), "train")
  with pytest.raises(UserError, match="expected generated"):
    preferences.load_pairs(pref_cfg("csv:x"), "train")


def test_labels_follow_the_bradley_terry_probability():
  rng = np.random.default_rng(0)
  gold_a, gold_b = np.full(20000, 0.3), np.full(20000, -0.1)
  wins = preferences.label_pairs(gold_a, gold_b, scale=5.0, rng=rng)
  assert abs(wins.mean() - 1 / (1 + np.exp(-2.0))) < 0.01  # sigmoid(5 * 0.4) = 0.881
  assert abs(preferences.label_pairs(gold_a, gold_a, 5.0, rng).mean() - 0.5) < 0.02


def test_pairs_from_hf_files_by_field_name_and_as_conversations(tmp_path):
  import datasets  # pylint: disable=g-import-not-at-top
  rows = [{"query": f"Q{i}", "good": " yes", "bad": " no"} for i in range(4)]
  datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "p.parquet"))
  cfg = pref_cfg(f"hf:{tmp_path / 'p.parquet'}")
  cfg.update(dict(prompt_field="query", chosen_field="good", rejected_field="bad"))
  assert preferences.load_pairs(cfg, "eval") == [("Q3", " yes", " no")]
  turn = lambda role, content: {"role": role, "content": content}
  chats = [{"chosen": [turn("user", "q"), turn("assistant", "good")],
            "rejected": [turn("user", "q"), turn("assistant", "bad")]}] * 4
  (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in chats))
  assert preferences.load_pairs(pref_cfg(f"jsonl:{tmp_path / 'c.jsonl'}"), "train")[0] == (
      "\n\nHuman: q\n\nAssistant:", " good", " bad")
  whole = [{"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"}] * 4
  datasets.Dataset.from_list(whole).to_parquet(str(tmp_path / "hh.parquet"))
  cfg = pref_cfg(f"hf:{tmp_path / 'hh.parquet'}")
  cfg.prompt_field = ""  # whole dialogues: split where they part
  assert preferences.load_pairs(cfg, "train")[0] == ("\n\nHuman: q\n\nAssistant:", " good", " bad")
  cfg.prompt_field = "prompt"
  with pytest.raises(UserError, match=r"hh.parquet:1: missing string field 'prompt'"):
    preferences.load_pairs(cfg, "train")
