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
