"""Batches: a pure function of the step, every row once per epoch, SFT masks, process slices."""

import numpy as np
import pytest

from rlhf_jax.data import batches
from rlhf_jax.data.tokenizers import ByteTokenizer
from rlhf_jax.errors import UserError

TOK = ByteTokenizer()


def pretrain_data(**kwargs):
  stream = np.arange(1000, dtype=np.int32) % 250
  return batches.PretrainData(stream, seq_len=16, batch_size=4, seed=7, **kwargs)


def test_batch_is_a_pure_function_of_the_step():
  a, b = pretrain_data(), pretrain_data()
  for step in [0, 5, 3, 40]:
    for key in ("inputs", "targets"):
      np.testing.assert_array_equal(a.batch(step)[key], b.batch(step)[key])
  assert not np.array_equal(a.batch(0)["inputs"], a.batch(1)["inputs"])


def test_targets_are_inputs_shifted_and_an_epoch_covers_every_window_once():
  data = pretrain_data()
  batch = data.batch(0)
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  rows_per_epoch = data.num_rows  # 999 // 16 = 62 windows
  assert rows_per_epoch == 62
  seen = np.concatenate([data.row_ids(s) for s in range(rows_per_epoch // 4)])
  assert len(set(seen.tolist())) == len(seen)


def test_processes_split_the_global_batch():
  whole = pretrain_data().batch(3)["inputs"]
  parts = [pretrain_data(process_index=i, process_count=2).batch(3)["inputs"] for i in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_sft_loss_mask_covers_response_and_eos_only():
  prompt, response = TOK.encode("Hi"), TOK.encode(" there")
  data = batches.SFTData([(prompt, response)], TOK, seq_len=16, batch_size=2, seed=0)
  batch = data.batch(0)
  row = batch["inputs"][0], batch["targets"][0], batch["loss_mask"][0], batch["mask"][0]
  sequence = [TOK.bos_id, *prompt, *response, TOK.eos_id]
  np.testing.assert_array_equal(row[0][:len(sequence) - 1], sequence[:-1])
  trained = row[1][row[2] > 0]
  np.testing.assert_array_equal(trained, [*response, TOK.eos_id])
  assert row[3].sum() == len(sequence) and row[3][len(sequence):].sum() == 0  # pads are not attended


def test_a_demonstrations_tool_results_are_context_not_targets():
  """SFT encodes a `<result>` apart and trains no loss on it, as RL's trajectories append it."""
  from rlhf_jax.training.lm.lm_trainer import encode_response
  turns = ["<call>calculator('6 * 7')</call>", "<result>42</result>", " The answer is 42."]
  response, loss = encode_response("".join(turns), TOK)
  assert response == [i for turn in turns for i in TOK.encode(turn)]
  assert loss == [1] * len(TOK.encode(turns[0])) + [0] * len(TOK.encode(turns[1])) + [1] * len(TOK.encode(turns[2]))
  assert encode_response(" no tools here", TOK) == (TOK.encode(" no tools here"),)
  prompt = TOK.encode("What is 6 * 7?")
  for pack in (False, True):
    batch = batches.SFTData([(prompt, response, loss)], TOK, seq_len=96, batch_size=1, seed=0, pack=pack).batch(0)
    trained = batch["targets"][0][batch["loss_mask"][0] > 0]
    np.testing.assert_array_equal(trained, [*TOK.encode(turns[0]), *TOK.encode(turns[2]), TOK.eos_id])


def test_sft_long_prompt_is_cut_from_the_left():
  tokens, start, truncated = batches.sft_sequence(list(range(10, 40)), [1, 2, 3], TOK, seq_len=10)
  assert truncated and len(tokens) == 11
  np.testing.assert_array_equal(tokens, [TOK.bos_id, *range(34, 40), 1, 2, 3, TOK.eos_id])
  assert start == 7


def test_eval_batches_see_every_row_once_with_zero_weight_padding():
  data = pretrain_data(shuffle=False)
  evals = list(batches.eval_batches(data, max_batches=100))
  assert len(evals) == 16  # ceil(62 / 4)
  weights = np.concatenate([b["loss_mask"][:, 0] for b in evals])
  assert weights.sum() == 62


def test_empty_dataset_is_a_clear_error():
  with pytest.raises(UserError, match="no training sequences"):
    batches.PretrainData(np.zeros((5,), np.int32), seq_len=16, batch_size=4, seed=0)


def test_packing_puts_each_sequence_in_one_row_within_its_capacity():
  lengths = np.random.default_rng(0).integers(3, 61, 200).tolist()
  rows = batches.pack_rows(lengths, 64)
  assert sorted(i for row in rows for i in row) == list(range(200))
  assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
  assert len(rows) <= 11 / 9 * -(-sum(lengths) // 64) + 1  # best-fit decreasing's bound
  assert rows == batches.pack_rows(lengths, 64)  # deterministic


def sft_pairs(n=12):
  rng = np.random.default_rng(1)
  return [(TOK.encode("q" * int(rng.integers(1, 6))), TOK.encode("a" * int(rng.integers(1, 9)))) for _ in range(n)]


def trained_targets(data) -> list:
  """Each sequence's trained (inputs, targets), from the data's rows, sorted."""
  found = []
  for batch in batches.eval_batches(data, 100):
    for row in range(len(batch["inputs"])):
      segments = batch.get("segments", batch["mask"])[row]
      for segment in set(segments[batch["mask"][row] > 0].tolist()):
        trained = (segments == segment) & (batch["loss_mask"][row] > 0)
        found.append((tuple(batch["inputs"][row][trained]), tuple(batch["targets"][row][trained])))
  return sorted(found)


def test_packed_sft_rows_train_on_the_same_targets_as_one_sequence_per_row():
  pairs = sft_pairs()
  padded = batches.SFTData(pairs, TOK, seq_len=32, batch_size=4, seed=0, shuffle=False)
  packed = batches.SFTData(pairs, TOK, seq_len=32, batch_size=4, seed=0, shuffle=False, pack=True)
  assert packed.num_rows < padded.num_rows == 12
  assert trained_targets(packed) == trained_targets(padded)
  batch = packed.batch(0)
  assert np.array_equal(batch["segments"] > 0, batch["mask"] > 0) and batch["segments"].max() >= 2


def test_packed_pretraining_makes_each_document_a_segment():
  stream = np.array([TOK.bos_id, 5, 6, TOK.eos_id, TOK.bos_id, 7, TOK.eos_id, TOK.bos_id, 8, 9], np.int32)
  batch = batches.PretrainData(stream, seq_len=9, batch_size=1, seed=0, bos_id=TOK.bos_id).batch(0)
  np.testing.assert_array_equal(batch["segments"][0], [2, 2, 2, 2, 3, 3, 3, 4, 4])
  assert "segments" not in batches.PretrainData(stream, seq_len=9, batch_size=1, seed=0).batch(0)
