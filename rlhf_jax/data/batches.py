"""Batches as pure functions of (seed, step): resuming at step s replays exactly batch s.

A batch is a dict of numpy arrays [batch, seq_len]:
  inputs     token ids fed to the model
  targets    the next token at each position
  mask       1 where `inputs` is a real token (attention and positions)
  loss_mask  1 where `targets` is trained on (everything for pretraining, the response for SFT)
  segments   packed rows only (`data.pack`): each input token's sequence id (1, 2, ...; 0 pads):
             the model attends within a sequence and restarts its positions at each
  shared, positions   packed preference rows with `data.share_prompt`: the prompt tokens a pair's
             rejected sequence reads from its chosen one (not repeated), and every token's position
Each process builds only its own rows (`process_index` of `process_count`).
"""

import bisect

import numpy as np

from rlhf_jax.errors import UserError


def token_stream(docs, tokenizer) -> np.ndarray:
  """BOS doc EOS BOS doc EOS ...: documents packed back to back for pretraining."""
  pieces = [np.array([tokenizer.bos_id, *tokenizer.encode(d), tokenizer.eos_id], np.int32) for d in docs]
  return np.concatenate(pieces) if pieces else np.zeros((0,), np.int32)


def sft_sequence(prompt_ids, response_ids, tokenizer, seq_len: int):
  """BOS prompt response EOS, cut to seq_len + 1 tokens; returns (tokens, response start, truncated).

  Too long: prompt tokens go first, from the left (the end of the prompt matters most),
  then the response is cut on the right.
  """
  room = seq_len + 1 - 1 - len(response_ids) - 1  # what is left for the prompt
  truncated = room < len(prompt_ids)
  prompt_ids = list(prompt_ids)[len(prompt_ids) - max(room, 1):] if truncated else list(prompt_ids)
  tokens = [tokenizer.bos_id, *prompt_ids, *response_ids, tokenizer.eos_id][:seq_len + 1]
  return np.array(tokens, np.int32), 1 + len(prompt_ids), truncated


def shared_prefix(chosen, rejected) -> int:
  """How many leading tokens of a pair's two `sft_sequence`s the rejected one can read from the
  chosen one: their common prompt (BOS included) but its last token, which each sequence keeps to
  predict its response's first token from."""
  (c_tokens, c_start, _), (r_tokens, r_start, _) = chosen, rejected
  limit = min(c_start, r_start) - 1
  differ = np.flatnonzero(c_tokens[:limit] != r_tokens[:limit])
  return int(differ[0]) if len(differ) else limit


class Batcher:
  """Fixed-length rows, reshuffled every epoch by a permutation seeded with (seed, epoch)."""

  def __init__(self, num_rows: int, batch_size: int, seed: int, shuffle: bool = True,
               process_index: int = 0, process_count: int = 1):
    if num_rows < 1:
      raise UserError("the dataset yields no training sequences: add data or lower data.seq_len")
    if batch_size % process_count:
      raise UserError(f"batch size {batch_size} is not divisible by {process_count} processes")
    self.num_rows, self.batch_size, self.seed, self.shuffle = num_rows, batch_size, seed, shuffle
    self.local_size = batch_size // process_count
    self.first_row = process_index * self.local_size

  def row_ids(self, step: int) -> np.ndarray:
    """Dataset rows of this process's part of global batch `step`."""
    flat = step * self.batch_size + self.first_row + np.arange(self.local_size)
    epochs, offsets = np.divmod(flat, self.num_rows)
    if not self.shuffle:
      return offsets
    return np.array([self._permutation(e)[o] for e, o in zip(epochs, offsets)])

  def _permutation(self, epoch: int) -> np.ndarray:
    if getattr(self, "_epoch", None) != epoch:
      self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
    return self._perm


def pack_rows(lengths, capacity: int) -> list[list[int]]:
  """Sequence indices per row, each row's lengths summing to at most `capacity`: best-fit
  decreasing (the longest first, each into the row it leaves least room in). Deterministic."""
  rows, free = [], []  # free: sorted (room left, row) of the rows with room
  for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
    at = bisect.bisect_left(free, (lengths[i], -1))
    if at == len(free):
      rows.append([])
      room, row = capacity, len(rows) - 1
    else:
      room, row = free.pop(at)
    rows[row].append(i)
    if room > lengths[i]:
      bisect.insort(free, (room - lengths[i], row))
  return rows


class PretrainData(Batcher):
  """Non-overlapping windows of seq_len + 1 tokens from one packed stream. With `bos_id`
  (`data.pack`), each document is a segment: attention stops at its BOS, positions restart."""

  def __init__(self, stream: np.ndarray, seq_len: int, batch_size: int, seed: int, bos_id=None, **kwargs):
    self.stream, self.seq_len, self.bos_id = stream, seq_len, bos_id
    super().__init__((len(stream) - 1) // seq_len, batch_size, seed, **kwargs)

  def rows(self, ids) -> dict:
    windows = np.stack([self.stream[i * self.seq_len:(i + 1) * self.seq_len + 1] for i in ids])
    ones = np.ones(windows[:, 1:].shape, np.int32)
    batch = {"inputs": windows[:, :-1], "targets": windows[:, 1:], "mask": ones, "loss_mask": ones}
    if self.bos_id is not None:  # 1 + the documents begun before each token in its window
      batch["segments"] = (1 + np.cumsum(windows[:, :-1] == self.bos_id, axis=1)).astype(np.int32)
    return batch

  def batch(self, step: int) -> dict:
    return self.rows(self.row_ids(step))


def _loss_mask(length: int, response_start: int, response_loss=None) -> np.ndarray:
  """1 on a sequence's response and EOS; within the response, `response_loss` (0 on the
  environment's tokens of a multi-turn demonstration) when given."""
  mask = np.zeros(length, np.int32)
  mask[response_start:] = 1
  if response_loss is not None:
    given = np.asarray(response_loss, np.int32)[:length - response_start]
    mask[response_start:response_start + len(given)] = given
  return mask


class SFTData(Batcher):
  """Prompt/response rows, right-padded; the loss covers the response and its EOS only. With
  `pack`, each row holds as many sequences as fit (`pack_rows`), each a segment of its own.
  A pair may carry a third item, the response's 0/1 loss mask (a multi-turn demonstration's
  environment tokens are context, not targets)."""

  def __init__(self, pairs_ids, tokenizer, seq_len: int, batch_size: int, seed: int, pack: bool = False,
               **kwargs):
    built = [sft_sequence(pair[0], pair[1], tokenizer, seq_len) for pair in pairs_ids]
    self.sequences = [tokens for tokens, _, _ in built]
    self.loss_masks = [_loss_mask(len(tokens), start, pair[2] if len(pair) > 2 else None)
                       for (tokens, start, _), pair in zip(built, pairs_ids)]
    self.num_truncated = sum(t for _, _, t in built)
    self.seq_len, self.pad_id, self.pack = seq_len, tokenizer.pad_id, pack
    self.packed = (pack_rows([len(t) for t in self.sequences], seq_len + 1) if pack
                   else [[i] for i in range(len(built))])
    super().__init__(len(self.packed), batch_size, seed, **kwargs)

  def rows(self, ids) -> dict:
    tokens = np.full((len(ids), self.seq_len + 1), self.pad_id, np.int32)
    segments = np.zeros_like(tokens)
    trained = np.zeros_like(tokens)  # the response tokens and EOS
    for row, i in enumerate(ids):
      at = 0
      for segment, j in enumerate(self.packed[i], 1):
        sequence = self.sequences[j]
        tokens[row, at:at + len(sequence)] = sequence
        segments[row, at:at + len(sequence)] = segment
        trained[row, at:at + len(sequence)] = self.loss_masks[j]
        at += len(sequence)
    # A target is trained on if it is a response token of the sequence its input belongs to.
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": (segments[:, :-1] > 0).astype(np.int32),
             "loss_mask": trained[:, 1:] * (segments[:, 1:] == segments[:, :-1])}
    if self.pack:
      batch["segments"] = segments[:, :-1]
    return batch

  def batch(self, step: int) -> dict:
    return self.rows(self.row_ids(step))


def eval_batches(data: Batcher, max_batches: int):
  """Every held-out row once (up to max_batches), in order; the last batch is padded with
  rows whose loss_mask is 0, so averages are exact."""
  n_batches = min(max_batches, -(-data.num_rows // data.batch_size))
  for step in range(n_batches):
    ids = step * data.batch_size + data.first_row + np.arange(data.local_size)
    valid = ids < data.num_rows
    batch = data.rows(np.where(valid, ids, 0))
    batch["loss_mask"] = batch["loss_mask"] * valid[:, None].astype(np.int32)
    yield batch


class PreferenceData(Batcher):
  """(prompt, chosen, rejected) rows as two right-padded sequences: BOS prompt response EOS.

  The reward model reads its score at the last real token (the EOS); DPO sums the log-probs
  of the tokens `*_response` marks (the response and its EOS). With `pack`, rows of
  2 * seq_len tokens hold as many whole pairs as fit (`pack_rows`), pair j of a row as
  segments 2j + 1 (chosen) and 2j + 2 (rejected), and `loss_mask` [rows, slots] marks the
  slots that hold a pair (training/preference/pairs.py reads them). With `share_prompt` too, the rejected
  sequence leaves out the prompt it shares with the chosen one but the prompt's last token (which
  predicts its response's first), and attends to the chosen one's copy: rows `shared` mark those
  tokens and `positions` continue them in the rejected sequence, so its tokens see the context
  and positions of their own sequence (exact: tests/training/test_pairs.py).
  """

  def __init__(self, triples_ids, tokenizer, seq_len: int, batch_size: int, seed: int, pack: bool = False,
               share_prompt: bool = False, labels=None, **kwargs):
    if share_prompt and not pack:
      raise UserError("data.share_prompt=True shares a prompt within a packed row: set data.pack=True too")
    # P(chosen is preferred) per pair (a judge model's soft label; 1: a hard label), laid out as loss_mask.
    self.labels = np.ones(len(triples_ids), np.float32) if labels is None else np.asarray(labels, np.float32)
    self.chosen = [sft_sequence(p, c, tokenizer, seq_len - 1) for p, c, _ in triples_ids]
    self.rejected = [sft_sequence(p, r, tokenizer, seq_len - 1) for p, _, r in triples_ids]
    self.num_truncated = sum(c[2] or r[2] for c, r in zip(self.chosen, self.rejected))  # pairs
    self.seq_len, self.pad_id, self.pack, self.share_prompt = seq_len, tokenizer.pad_id, pack, share_prompt
    self.shared = [shared_prefix(c, r) if share_prompt else 0 for c, r in zip(self.chosen, self.rejected)]
    lengths = [len(c[0]) + len(r[0]) - shared for c, r, shared in zip(self.chosen, self.rejected, self.shared)]
    self.packed = pack_rows(lengths, 2 * seq_len) if pack else [[i] for i in range(len(lengths))]
    self.slots = max(map(len, self.packed), default=1)
    super().__init__(len(self.packed), batch_size, seed, **kwargs)

  def rows(self, ids) -> dict:
    return self._packed_rows(ids) if self.pack else self._pair_rows(ids)

  def _pair_rows(self, ids) -> dict:
    batch = {}
    for name, sequences in (("chosen", self.chosen), ("rejected", self.rejected)):
      tokens = np.full((len(ids), self.seq_len), self.pad_id, np.int32)
      for row, i in enumerate(ids):
        tokens[row, :len(sequences[i][0])] = sequences[i][0]
      lengths = np.array([len(sequences[i][0]) for i in ids])[:, None]
      starts = np.array([sequences[i][1] for i in ids])[:, None]
      positions = np.arange(self.seq_len)
      batch[name], batch[f"{name}_mask"] = tokens, (positions < lengths).astype(np.int32)
      batch[f"{name}_response"] = ((positions >= starts) & (positions < lengths)).astype(np.int32)
    batch["loss_mask"] = np.ones((len(ids), 1), np.int32)  # 1 per pair: eval padding zeroes it
    batch["label"] = self.labels[np.asarray(ids, np.int64)][:, None]
    return batch

  def _packed_rows(self, ids) -> dict:
    tokens = np.full((len(ids), 2 * self.seq_len), self.pad_id, np.int32)
    segments, response, shared, positions = (np.zeros_like(tokens) for _ in range(4))
    loss_mask = np.zeros((len(ids), self.slots), np.int32)
    label = np.ones((len(ids), self.slots), np.float32)
    for row, i in enumerate(ids):
      at = 0
      for slot, j in enumerate(self.packed[i]):
        for half, (sequence, start, _) in enumerate((self.chosen[j], self.rejected[j])):
          skip = self.shared[j] if half else 0  # the rejected sequence's prompt tokens its chosen one holds
          end = at + len(sequence) - skip
          tokens[row, at:end] = sequence[skip:]
          segments[row, at:end] = 2 * slot + half + 1
          positions[row, at:end] = np.arange(skip, len(sequence))
          response[row, at + start - skip:end] = 1
          if not half:
            shared[row, at:at + self.shared[j]] = 1
          at = end
        loss_mask[row, slot], label[row, slot] = 1, self.labels[j]
    batch = {"tokens": tokens, "mask": (segments > 0).astype(np.int32), "response": response,
             "segments": segments, "loss_mask": loss_mask, "label": label}
    return {**batch, "shared": shared, "positions": positions} if self.share_prompt else batch

  def batch(self, step: int) -> dict:
    return self.rows(self.row_ids(step))
