"""Continuous batching: a fixed number of slots decode together, and a slot whose sample is done
takes the next prompt, until every sample is drawn; all inside one compiled program.

A rollout's response lengths are long-tailed: the static sampler (`sampling.sample`) steps every
row until the longest is done, so most of its decode slots hold padding, and its KV cache is rows
x (prompt + budget). Here the cache is slots x (prompt + budget), a `RaggedCache` (each slot its
own length), and the decode steps are about sum(lengths) / slots. Once no sample is left to
start, the active slots move to half as many, and again (`tail_sizes`): the last long samples
do not keep every slot stepping.

Each sample draws its token at step s from fold_in(its own key, s), its key fold_in(rng, row)
(`sampling.sample_keys`): its tokens do not depend on the slot count nor on which samples share
its batch, and equal the static sampler's (a test); its log-probs are the training model's.
"""

import functools
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp

from rlhf_jax.models.sampling import (DONE_CHECK_EVERY, SampleOutput, SamplingParams, check_length, choose_tokens,
                                      empty_output, in_compute_dtype, sample, sample_keys)
from rlhf_jax.models.transformer import RaggedCache, Transformer

# A freed slot waits until 1 / ADMIT_FRACTION of the slots is free (or no sample is left to
# start): one admission prefills that many prompts as one batch, which costs about as much as
# prefilling one (the weights are read once), and the loop leaves its decode steps once for it.
ADMIT_FRACTION = 4


@flax.struct.dataclass
class Slots:
  """The decode loop's carry: each slot's cache, next logits, sample (row) and step."""
  cache: RaggedCache  # [slots, ...]
  logits: jax.Array  # [slots, vocab] float32: the next token's
  row: jax.Array  # [slots] int32: the sample each slot decodes; `rows` (one past the last) when idle
  step: jax.Array  # [slots] int32: the tokens its sample has so far
  next_row: jax.Array  # int32: the first sample not yet started
  result: SampleOutput  # [rows, max_new_tokens]


BATCHINGS = ("static", "continuous")  # sample.batching


def slots_for(batching: str, slots: int, rows: int) -> int:
  """The slots decoding a batch of `rows` prompts: 0 for static batching (every row at once);
  continuous: `sample.slots`, 0 meaning a quarter of the rows (the CPU benchmark's best,
  docs/benchmarks.md), never more than the rows."""
  if batching not in BATCHINGS:
    raise ValueError(f"sample.batching={batching!r}: choose one of {BATCHINGS}")
  if batching == "static":
    return 0
  return min(slots or max(1, rows // 4), rows)


def batching_of(sample_cfg) -> dict:
  """`generate`'s batching and slots from a config's `sample` section (None: static)."""
  sample_cfg = sample_cfg or {}
  return dict(batching=sample_cfg.get("batching", "static"), slots=sample_cfg.get("slots", 0))


def generate(model: Transformer, params, prompts: jax.Array, prompt_mask: jax.Array, rng: jax.Array,
             sampling: SamplingParams, *, max_new_tokens: int, eos_id: int, pad_id: int, batching: str = "static",
             slots: int = 0, stop_at: jax.Array | None = None) -> SampleOutput:
  """`sampling.sample` (static batching) or `sample_continuous`, the slots resolved for these
  prompts' rows (`slots_for`). Either draws the same tokens."""
  slots = slots_for(batching, slots, prompts.shape[0])
  fn = functools.partial(sample_continuous, slots=slots) if slots else sample
  return fn(model, params, prompts, prompt_mask, rng, sampling, max_new_tokens=max_new_tokens, eos_id=eos_id,
            pad_id=pad_id, stop_at=stop_at)


def admission_width(slots: int) -> int:
  return max(1, slots // ADMIT_FRACTION)


def left_aligned(prompts: jax.Array, lengths: jax.Array) -> jax.Array:
  """Left-padded prompts [rows, prompt_len] with their real tokens moved to the front."""
  width = prompts.shape[1]
  return jnp.take_along_axis(prompts, (jnp.arange(width) + width - lengths[:, None]) % width, axis=1)


class Queue(NamedTuple):
  """What the loop draws from: the model and settings, and each sample's key, prompt (left-
  aligned, and its length) and step budget."""
  model: Transformer
  params: Any  # in the compute dtype
  sampling: SamplingParams
  eos_id: int
  pad_id: int
  keys: jax.Array  # [rows]
  prompts: jax.Array  # [rows, prompt_len], real tokens first
  lengths: jax.Array  # [rows] int32
  stop: jax.Array  # [rows] int32: tokens at most

  @property
  def rows(self) -> int:
    return self.keys.shape[0]


def sample_continuous(model: Transformer, params, prompts: jax.Array, prompt_mask: jax.Array, rng: jax.Array,
                      sampling: SamplingParams, *, slots: int, max_new_tokens: int, eos_id: int, pad_id: int,
                      stop_at: jax.Array | None = None) -> SampleOutput:
  """`sampling.sample`'s contract (left-padded prompts [rows, prompt_len]; [rows, max_new_tokens]
  out), decoded `slots` rows at a time. Every DONE_CHECK_EVERY steps the free slots take the next
  prompts (`admission_width` at a time), prefilled in the loop."""
  rows, prompt_len = prompts.shape
  check_length(model, prompt_len, max_new_tokens)
  lengths = jnp.sum(prompt_mask, axis=1, dtype=jnp.int32)
  stop = jnp.full((rows,), max_new_tokens, jnp.int32)
  q = Queue(model, in_compute_dtype(params, model.cfg), sampling, eos_id, pad_id, sample_keys(rng, rows),
            left_aligned(prompts, lengths), lengths, stop if stop_at is None else jnp.minimum(stop, stop_at.astype(jnp.int32)))
  width = min(admission_width(slots), rows)

  def ready(c: Slots) -> jax.Array:
    """Enough free slots for an admission's batch, or none decoding, while samples are left."""
    free, left = jnp.sum(c.row >= rows), rows - c.next_row
    return (left > 0) & ((free >= jnp.minimum(width, left)) | (free == slots))

  # While samples are left: decode until an admission is due, then admit (no lax.cond around
  # it: on the CPU a conditional copied the whole carry, cache included, each time).
  c = Slots(RaggedCache.empty(model.cfg, slots, prompt_len + max_new_tokens),
            jnp.zeros((slots, model.cfg.vocab_size), jnp.float32), jnp.full((slots,), rows, jnp.int32),
            jnp.zeros((slots,), jnp.int32), jnp.int32(0), empty_output(rows, max_new_tokens, pad_id))
  c = admit(q, c, min(slots, rows))  # the first prompts fill every slot, in one prefill
  c = jax.lax.while_loop(lambda c: c.next_row < rows, lambda c: admit(q, decode_while(q, c, lambda c: ~ready(c)),
                                                                      width), c)
  # The tail, no sample left to start: as the slots empty, the active ones move to half as many
  # (a step costs about its rows), down to an eighth.
  for size in tail_sizes(slots):
    c = compacted(decode_while(q, c, lambda c: jnp.sum(c.row < rows) > size), size, rows)
  return decode_while(q, c, lambda c: jnp.any(c.row < rows)).result


def admit(q: Queue, c: Slots, width: int) -> Slots:
  """The next `width` samples (or as many as slots are free, or samples are left) prefilled,
  as one batch, into free slots."""
  slots, prompt_len = c.row.shape[0], q.prompts.shape[1]
  free = c.row >= q.rows
  k = jnp.arange(width)
  started = jnp.minimum(jnp.minimum(jnp.sum(free), q.rows - c.next_row), width)
  slot = jnp.where(k < started, jnp.argsort(~free, stable=True)[:width], slots)  # `slots`: dropped
  row = jnp.minimum(c.next_row + k, q.rows - 1)
  length = q.lengths[row]
  out = q.model.apply({"params": q.params}, q.prompts[row], jnp.arange(prompt_len) < length[:, None],
                      cache=RaggedCache.empty(q.model.cfg, width, prompt_len), logits_at=jnp.maximum(length - 1, 0))
  put = lambda old, new: old.at[slot, :, :prompt_len].set(new, mode="drop")
  cache = RaggedCache(tuple(map(put, c.cache.keys, out.cache.keys)), tuple(map(put, c.cache.values, out.cache.values)),
                      c.cache.lengths.at[slot].set(length, mode="drop"))
  return c.replace(cache=cache, logits=c.logits.at[slot].set(out.logits[:, 0], mode="drop"),
                   row=c.row.at[slot].set(c.next_row + k, mode="drop"), step=c.step.at[slot].set(0, mode="drop"),
                   next_row=c.next_row + started)


def decode(q: Queue, c: Slots) -> Slots:
  """One token for every active slot, written at its sample's row and step, then fed back."""
  active = c.row < q.rows
  row = jnp.minimum(c.row, q.rows - 1)
  token, logprob = choose_tokens(c.logits, jax.vmap(jax.random.fold_in)(q.keys[row], c.step), q.sampling, True)
  token = jnp.where(active, token, q.pad_id)
  at = (c.row, c.step)  # an idle slot's row is out of range: its writes are dropped
  result = SampleOutput(c.result.tokens.at[at].set(token, mode="drop"),
                        c.result.logprobs.at[at].set(logprob, mode="drop"),
                        c.result.mask.at[at].set(1, mode="drop"))
  finished = active & ((token == q.eos_id) | (c.step + 1 >= q.stop[row]))
  out = q.model.apply({"params": q.params}, token[:, None], active[:, None], cache=c.cache)
  return c.replace(cache=out.cache, logits=out.logits[:, -1], row=jnp.where(finished, q.rows, c.row),
                   step=c.step + active, result=result)


def decode_while(q: Queue, c: Slots, going) -> Slots:
  """DONE_CHECK_EVERY steps at a time while `going(c)`."""
  steps = lambda c: jax.lax.fori_loop(0, DONE_CHECK_EVERY, lambda _, c: decode(q, c), c)
  return jax.lax.while_loop(going, steps, c)


def tail_sizes(slots: int) -> list[int]:
  """The slot counts the tail moves to: halves, down to an eighth (each one more compilation of
  the decode step)."""
  return [slots >> i for i in range(1, 4) if slots >> i >= 1]


def compacted(c: Slots, size: int, rows: int) -> Slots:
  """The first `size` slots after moving the active ones (at most `size`) to the front."""
  keep = jnp.argsort(c.row >= rows, stable=True)[:size]
  cache, logits, row, step = jax.tree.map(lambda x: x[keep], (c.cache, c.logits, c.row, c.step))
  return c.replace(cache=cache, logits=logits, row=row, step=step)
