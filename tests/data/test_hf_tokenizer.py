"""A Hugging Face tokenizer's stop ids: its EOS, then what generation_config.json lists as
eos_token_id (a chat checkpoint's end of turn), kept in a run's copy and written by an export."""

import json
import os

import pytest

from rlhf_jax.data.hf_tokenizer import HFTokenizer
from rlhf_jax.data.tokenizers import ByteTokenizer, load_tokenizer
from rlhf_jax.interop import hf_export
from tests.conftest import small_model
from tests.interop import tiny_hf

pytest.importorskip("tokenizers")


def gemma_like(directory: str, eos_token_id=None) -> HFTokenizer:
  """A tokenizer whose EOS is <|endoftext|> and whose turns end with <end_of_turn>, with
  `eos_token_id` as its generation_config.json's (none without it)."""
  tiny_hf.bpe_tokenizer(directory, ("<start_of_turn>", "<end_of_turn>"))
  if eos_token_id is not None:
    tiny_hf.write_json(os.path.join(directory, "generation_config.json"), {"eos_token_id": eos_token_id})
  return HFTokenizer(directory)


def test_stop_ids_are_eos_then_generation_configs_list_each_once(tmp_path):
  plain = gemma_like(str(tmp_path / "plain"))
  eos, end_of_turn = plain.eos_id, plain.token_to_id("<end_of_turn>")
  assert plain.stop_ids == (eos,)
  assert gemma_like(str(tmp_path / "list"), [eos, end_of_turn]).stop_ids == (eos, end_of_turn)
  assert gemma_like(str(tmp_path / "other_first"), [end_of_turn, eos]).stop_ids == (eos, end_of_turn)
  assert gemma_like(str(tmp_path / "one"), end_of_turn).stop_ids == (eos, end_of_turn)
  assert ByteTokenizer().stop_ids == (ByteTokenizer().eos_id,)


def test_a_runs_saved_tokenizer_keeps_the_stop_ids(tmp_path):
  end_of_turn = gemma_like(str(tmp_path / "plain")).token_to_id("<end_of_turn>")
  tokenizer = gemma_like(str(tmp_path / "hf"), [end_of_turn])
  tokenizer.save(str(tmp_path / "run"))
  saved = load_tokenizer(str(tmp_path / "run"))  # the HF files copied, not generation_config.json
  assert (saved.eos_id, saved.stop_ids) == (tokenizer.eos_id, (tokenizer.eos_id, end_of_turn))


def test_an_export_writes_every_stop_id_and_loads_them_back(tmp_path):
  tokenizer = gemma_like(str(tmp_path / "hf"))
  eos, end_of_turn = tokenizer.eos_id, tokenizer.token_to_id("<end_of_turn>")
  tokenizer = gemma_like(str(tmp_path / "chat"), [eos, end_of_turn])
  out = str(tmp_path / "export")
  hf_export.export_config_only(small_model(), tokenizer, out)
  hf_export.export_tokenizer(tokenizer, out, 64)
  with open(os.path.join(out, "generation_config.json"), encoding="utf-8") as f:
    assert json.load(f)["eos_token_id"] == [eos, end_of_turn]  # as HF writes a chat checkpoint's
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["eos_token_id"] == eos
  reloaded = load_tokenizer(out)
  assert (reloaded.eos_id, reloaded.stop_ids) == (eos, (eos, end_of_turn))
  hf_export.export_config_only(small_model(), ByteTokenizer(), str(tmp_path / "byte"))
  with open(tmp_path / "byte" / "generation_config.json", encoding="utf-8") as f:
    assert json.load(f)["eos_token_id"] == ByteTokenizer().eos_id  # one stop id: an int, as before
