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
its batch, and equal the static sampler's (a test); its log-probs are the training model's. An
MoE model's samples hold every token's experts as the static sampler's do (router replay): its
prompt's from its admission's prefill, put back in the left-padded columns, and each response
token's from the step that fed it.
"""

import functools
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp

from rlhf_jax.models.sampling import (DONE_CHECK_EVERY, SampleOutput, SamplingParams, check_length, choose_tokens,
                                      empty_output, in_compute_dtype, is_stop, real_only, sample, sample_keys)
from rlhf_jax.models import moe, paged
from rlhf_jax.models.paged import PagedCache, blocks_for
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
  retry: Any = None  # paged: [rows] int32, a stack of the preempted samples, to start again
  retried: Any = None  # paged: int32, how many the stack holds
  preemptions: Any = None  # paged: int32, samples preempted so far


# sample.batching: "paged" is continuous batching over a paged KV cache (models/paged.py).
BATCHINGS = ("static", "continuous", "paged")
PAGED_DEFAULTS = dict(cache_blocks=0, block_size=16, paged_attention="xla")  # the paged cache's sample.* fields


def slots_for(batching: str, slots: int, rows: int, **unused_paging) -> int:
  """The slots decoding a batch of `rows` prompts: 0 for static batching (every row at once);
  continuous or paged: `sample.slots`, 0 meaning a quarter of the rows (the CPU benchmark's
  best, docs/benchmarks.md), never more than the rows."""
  if batching not in BATCHINGS:
    raise ValueError(f"sample.batching={batching!r}: choose one of {BATCHINGS}")
  if batching == "static":
    return 0
  return min(slots or max(1, rows // 4), rows)


def paged_blocks(cache_blocks: int, slots: int, length: int, block_size: int) -> int:
  """The paged pool's blocks: `sample.cache_blocks`, 0 meaning half of what every slot's whole
  table would take (the ragged cache's memory halved); never fewer than one table's."""
  per_row = -(-length // block_size)
  return max(cache_blocks or slots * per_row // 2, per_row)


def batching_of(sample_cfg) -> dict:
  """`generate`'s batching, slots and paged cache from a config's `sample` section (None: static)."""
  sample_cfg = sample_cfg or {}
  return dict(batching=sample_cfg.get("batching", "static"), slots=sample_cfg.get("slots", 0),
              **{k: sample_cfg.get(k, v) for k, v in PAGED_DEFAULTS.items()})


def sampler_cache(rows: int, length: int, batching: str = "static", slots: int = 0, cache_blocks: int = 0,
                  block_size: int = 16, **unused) -> tuple[int, int, str]:
  """(rows, positions) of the KV cache sampling `rows` prompts to `length` tokens holds, and
  what they are (the memory plan's line)."""
  slots = slots_for(batching, slots, rows)
  if batching == "paged":
    blocks = paged_blocks(cache_blocks, slots, length, block_size)
    return 1, (blocks + 1) * block_size, f"{blocks} blocks x {block_size} tokens, paged, {slots} slots"
  return (slots, length, f"{slots} slots x {length} tokens") if slots else (rows, length, f"{rows} rows x {length} tokens")


def generate(model: Transformer, params, prompts: jax.Array, prompt_mask: jax.Array, rng: jax.Array,
             sampling: SamplingParams, *, max_new_tokens: int, stop_ids: tuple, pad_id: int, batching: str = "static",
             slots: int = 0, stop_at: jax.Array | None = None, cache_blocks: int = 0, block_size: int = 16,
             paged_attention: str = "xla") -> SampleOutput:
  """`sampling.sample` (static batching), `sample_continuous` or `sample_paged`, the slots
  resolved for these prompts' rows (`slots_for`). Each draws the same tokens, and stops a row
  at any of `stop_ids` (EOS first)."""
  slots = slots_for(batching, slots, prompts.shape[0])
  if batching == "paged":
    blocks = paged_blocks(cache_blocks, slots, prompts.shape[1] + max_new_tokens, block_size)
    fn = functools.partial(sample_paged, slots=slots, blocks=blocks, block_size=block_size, kernel=paged_attention)
  else:
    fn = functools.partial(sample_continuous, slots=slots) if slots else sample
  return fn(model, params, prompts, prompt_mask, rng, sampling, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
            pad_id=pad_id, stop_at=stop_at)


def admission_width(slots: int) -> int:
  return max(1, slots // ADMIT_FRACTION)


def left_aligned(prompts: jax.Array, lengths: jax.Array) -> jax.Array:
  """Left-padded prompts [rows, prompt_len] with their real tokens moved to the front."""
  width = prompts.shape[1]
  return jnp.take_along_axis(prompts, (jnp.arange(width) + width - lengths[:, None]) % width, axis=1)


def empty_result(model: Transformer, rows: int, prompt_len: int, max_new_tokens: int, pad_id: int) -> SampleOutput:
  """`empty_output`, with an MoE model's experts [rows, layers, prompt_len + max_new_tokens, k]
  all 0 (the static sampler's at pads and after a response's end), to be written."""
  result, cfg = empty_output(rows, max_new_tokens, pad_id), model.cfg
  if not cfg.n_experts:
    return result
  shape = (rows, cfg.n_layers, prompt_len + max_new_tokens, cfg.experts_per_token)
  return result._replace(experts=jnp.zeros(shape, jnp.int32))


def with_prompt_experts_at(result: SampleOutput, router, row: jax.Array, lengths: jax.Array) -> SampleOutput:
  """`result` with an admission's prefill routing (`router`, of left-aligned prompts of
  `lengths`) in the prompt columns of each `row` (out of range: dropped), left-padded again as
  the static sampler's (`sampling.with_prompt_experts`), 0 at the pads."""
  if result.experts is None:
    return result
  experts = moe.stack_experts(router)  # [width, layers, prompt_len, k], real tokens first
  prompt_len = experts.shape[2]
  columns = jnp.arange(prompt_len)
  padded = jnp.take_along_axis(experts, ((columns + lengths[:, None]) % prompt_len)[:, None, :, None], axis=2)
  padded = real_only(padded, columns >= prompt_len - lengths[:, None])
  return result._replace(experts=result.experts.at[row, :, :prompt_len].set(padded, mode="drop"))


def with_step_experts_at(result: SampleOutput, router, at) -> SampleOutput:
  """`result` with a decode step's routing (`router`, one token per slot) at each slot's (row,
  step) `at` (an idle slot's row out of range: dropped), as `sampling.recorded` writes it."""
  if result.experts is None:
    return result
  row, step = at
  column = result.experts.shape[2] - result.tokens.shape[1] + step
  return result._replace(experts=result.experts.at[row, :, column].set(moe.stack_experts(router)[:, :, 0],
                                                                       mode="drop"))


class Queue(NamedTuple):
  """What the loop draws from: the model and settings, and each sample's key, prompt (left-
  aligned, and its length) and step budget."""
  model: Transformer
  params: Any  # in the compute dtype
  sampling: SamplingParams
  stop_ids: tuple  # the ids that end a sample, EOS first (sampling.is_stop)
  pad_id: int
  keys: jax.Array  # [rows]
  prompts: jax.Array  # [rows, prompt_len], real tokens first
  lengths: jax.Array  # [rows] int32
  stop: jax.Array  # [rows] int32: tokens at most

  @property
  def rows(self) -> int:
    return self.keys.shape[0]


def make_queue(model: Transformer, params, prompts, prompt_mask, rng, sampling: SamplingParams, max_new_tokens: int,
               stop_ids: tuple, pad_id: int, stop_at=None) -> Queue:
  rows, prompt_len = prompts.shape
  check_length(model, prompt_len, max_new_tokens)
  lengths = jnp.sum(prompt_mask, axis=1, dtype=jnp.int32)
  stop = jnp.full((rows,), max_new_tokens, jnp.int32)
  return Queue(model, in_compute_dtype(params, model.cfg), sampling, stop_ids, pad_id, sample_keys(rng, rows),
               left_aligned(prompts, lengths), lengths,
               stop if stop_at is None else jnp.minimum(stop, stop_at.astype(jnp.int32)))


def sample_continuous(model: Transformer, params, prompts: jax.Array, prompt_mask: jax.Array, rng: jax.Array,
                      sampling: SamplingParams, *, slots: int, max_new_tokens: int, stop_ids: tuple, pad_id: int,
                      stop_at: jax.Array | None = None) -> SampleOutput:
  """`sampling.sample`'s contract (left-padded prompts [rows, prompt_len]; [rows, max_new_tokens]
  out), decoded `slots` rows at a time. Every DONE_CHECK_EVERY steps the free slots take the next
  prompts (`admission_width` at a time), prefilled in the loop."""
  rows, prompt_len = prompts.shape
  q = make_queue(model, params, prompts, prompt_mask, rng, sampling, max_new_tokens, stop_ids, pad_id, stop_at)
  width = min(admission_width(slots), rows)

  def ready(c: Slots) -> jax.Array:
    """Enough free slots for an admission's batch, or none decoding, while samples are left."""
    free, left = jnp.sum(c.row >= rows), rows - c.next_row
    return (left > 0) & ((free >= jnp.minimum(width, left)) | (free == slots))

  # While samples are left: decode until an admission is due, then admit (no lax.cond around
  # it: on the CPU a conditional copied the whole carry, cache included, each time).
  c = Slots(RaggedCache.empty(model.cfg, slots, prompt_len + max_new_tokens),
            jnp.zeros((slots, model.cfg.vocab_size), jnp.float32), jnp.full((slots,), rows, jnp.int32),
            jnp.zeros((slots,), jnp.int32), jnp.int32(0), empty_result(model, rows, prompt_len, max_new_tokens, pad_id))
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
  result = with_prompt_experts_at(c.result, out.router, jnp.where(k < started, row, q.rows), length)
  return c.replace(cache=cache, logits=c.logits.at[slot].set(out.logits[:, 0], mode="drop"),
                   row=c.row.at[slot].set(c.next_row + k, mode="drop"), step=c.step.at[slot].set(0, mode="drop"),
                   next_row=c.next_row + started, result=result)


def decode(q: Queue, c: Slots) -> Slots:
  """One token for every active slot, written at its sample's row and step, then fed back."""
  active = c.row < q.rows
  row = jnp.minimum(c.row, q.rows - 1)
  token, logprob = choose_tokens(c.logits, jax.vmap(jax.random.fold_in)(q.keys[row], c.step), q.sampling, True)
  token = jnp.where(active, token, q.pad_id)
  at = (c.row, c.step)  # an idle slot's row is out of range: its writes are dropped
  result = c.result._replace(tokens=c.result.tokens.at[at].set(token, mode="drop"),
                             logprobs=c.result.logprobs.at[at].set(logprob, mode="drop"),
                             mask=c.result.mask.at[at].set(1, mode="drop"))
  finished = active & (is_stop(token, q.stop_ids) | (c.step + 1 >= q.stop[row]))
  out = q.model.apply({"params": q.params}, token[:, None], active[:, None], cache=c.cache)
  return c.replace(cache=out.cache, logits=out.logits[:, -1], row=jnp.where(finished, q.rows, c.row),
                   step=c.step + active, result=with_step_experts_at(result, out.router, at))


def decode_while(q: Queue, c: Slots, going, step=decode) -> Slots:
  """DONE_CHECK_EVERY steps (`step`) at a time while `going(c)`."""
  steps = lambda c: jax.lax.fori_loop(0, DONE_CHECK_EVERY, lambda _, c: step(q, c), c)
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


def sample_paged(model: Transformer, params, prompts: jax.Array, prompt_mask: jax.Array, rng: jax.Array,
                 sampling: SamplingParams, *, slots: int, blocks: int, block_size: int, max_new_tokens: int,
                 stop_ids: tuple, pad_id: int, stop_at: jax.Array | None = None, kernel: str = "xla",
                 with_preemptions: bool = False) -> SampleOutput:
  """`sample_continuous` over a paged cache (models/paged.py) of `blocks` blocks of `block_size`
  positions: a sample holds the blocks of its tokens, an admission waits for its prompt's blocks
  (and one for each decoding slot), and a step short of blocks preempts the youngest samples,
  which start again later and draw the same tokens. No tail compaction: a preempted sample may
  need every slot's loop again. `with_preemptions`: (output, how many preemptions there were)."""
  rows, prompt_len = prompts.shape
  q = make_queue(model, params, prompts, prompt_mask, rng, sampling, max_new_tokens, stop_ids, pad_id, stop_at)
  width = min(admission_width(slots), rows)
  cache = PagedCache.empty(model.cfg, slots, prompt_len + max_new_tokens, blocks, block_size, kernel=kernel)
  if blocks < cache.table.shape[1]:
    raise ValueError(f"sample.cache_blocks={blocks}: the pool must hold one sample's {cache.table.shape[1]} blocks "
                     f"of {block_size} (prompt {prompt_len} + {max_new_tokens} new tokens)")
  c = Slots(cache, jnp.zeros((slots, model.cfg.vocab_size), jnp.float32), jnp.full((slots,), rows, jnp.int32),
            jnp.zeros((slots,), jnp.int32), jnp.int32(0), empty_result(model, rows, prompt_len, max_new_tokens, pad_id),
            jnp.zeros((rows,), jnp.int32), jnp.int32(0), jnp.int32(0))
  left = lambda c: rows - c.next_row + c.retried
  decoding = lambda c: jnp.any(c.row < rows)

  def ready(c: Slots) -> jax.Array:
    """`sample_continuous`'s condition, and the next sample's prompt blocks free."""
    free = jnp.sum(c.row >= rows)
    wanted = (left(c) > 0) & ((free >= jnp.minimum(width, left(c))) | (free == slots))
    return wanted & (admission(q, c, 1)[1][0] > 0)

  body = lambda c: admit_paged(q, decode_while(q, c, lambda c: decoding(c) & ~ready(c), decode_paged), width)
  c = jax.lax.while_loop(lambda c: (left(c) > 0) | decoding(c), body, c)
  return (c.result, c.preemptions) if with_preemptions else c.result


def admission(q: Queue, c: Slots, width: int):
  """(row, admitted [width] bool, blocks [width]) of the next `width` samples: preempted ones
  first (the stack's top), then those not yet started; a prefix of them is admitted, as many as
  slots are free and their prompts' blocks fit in what is free less one block per decoding slot."""
  free_slots = jnp.sum(c.row >= q.rows)
  k = jnp.arange(width)
  row = jnp.where(k < c.retried, c.retry[jnp.maximum(c.retried - 1 - k, 0)], c.next_row + k - c.retried)
  waiting = (k < free_slots) & (row < q.rows)
  row = jnp.minimum(row, q.rows - 1)
  need = jnp.where(waiting, blocks_for(q.lengths[row], c.cache.block_size), 0)
  room = jnp.sum(c.cache.free) - (c.row.shape[0] - free_slots)
  return row, waiting & (jnp.cumsum(need) <= room), need


def admit_paged(q: Queue, c: Slots, width: int) -> Slots:
  """`admit` into the paged cache: each admitted sample's prompt blocks taken from the free list,
  its prompt prefilled through its new block table."""
  slots, prompt_len = c.row.shape[0], q.prompts.shape[1]
  row, admitted, need = admission(q, c, width)
  started = jnp.sum(admitted)
  slot = jnp.where(admitted, jnp.argsort(c.row < q.rows, stable=True)[:width], slots)  # `slots`: dropped
  cache = c.cache
  table, free = paged.take_blocks(cache, jnp.where(admitted, need, 0), cache.table.shape[1])
  length = q.lengths[row]
  view = cache.replace(table=table, lengths=jnp.zeros((width,), jnp.int32))
  out = q.model.apply({"params": q.params}, q.prompts[row], jnp.arange(prompt_len) < length[:, None], cache=view,
                      logits_at=jnp.maximum(length - 1, 0))
  cache = cache.replace(keys=out.cache.keys, values=out.cache.values, table=cache.table.at[slot].set(table, mode="drop"),
                        lengths=cache.lengths.at[slot].set(length, mode="drop"), free=free)
  from_stack = jnp.minimum(started, c.retried)
  result = with_prompt_experts_at(c.result, out.router, jnp.where(admitted, row, q.rows), length)
  return c.replace(cache=cache, logits=c.logits.at[slot].set(out.logits[:, 0], mode="drop"),
                   row=c.row.at[slot].set(row, mode="drop"), step=c.step.at[slot].set(0, mode="drop"),
                   retried=c.retried - from_stack, next_row=c.next_row + started - from_stack, result=result)


def decode_paged(q: Queue, c: Slots) -> Slots:
  """`decode` with the blocks it needs made room for first (the preempted samples onto the
  stack, their partial responses cleared), and the blocks of the samples it finishes released."""
  cache, preempted = paged.make_room(c.cache, c.row < q.rows, c.step)
  at = jnp.where(preempted, c.retried + jnp.cumsum(preempted) - 1, q.rows)  # `rows`: dropped
  cleared = jnp.zeros((q.rows,), bool).at[c.row].set(preempted, mode="drop")
  result = c.result._replace(mask=jnp.where(cleared[:, None], 0, c.result.mask))
  c = c.replace(cache=cache, row=jnp.where(preempted, q.rows, c.row), retry=c.retry.at[at].set(c.row, mode="drop"),
                retried=c.retried + jnp.sum(preempted), result=result,
                preemptions=c.preemptions + jnp.sum(preempted))
  decoding = c.row < q.rows
  c = decode(q, c)
  return c.replace(cache=paged.release(c.cache, decoding & (c.row >= q.rows)))
