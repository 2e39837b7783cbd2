"""Autoregressive sampling with a KV cache, compiled as one program.

The prompt is prefilled once; then one token per step inside `lax.while_loop`, with no host
round trip per token. Temperature, top-k, top-p and greedy are traced values (a
`SamplingParams` of arrays), so changing them never recompiles.
"""

from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp

from rlhf_jax.models import moe
from rlhf_jax.models.logits import first_argmax, token_logprobs
from rlhf_jax.models.transformer import KVCache, RaggedCache, Transformer

# Steps between two checks that every row is done. The check is a reduction over the devices
# holding the rows, a sync each time; checked at every step, the syncs were a third of the
# decode ops' time on two CPU devices (the sampler's wall time: -5 to -7%).
# Stopping up to 7 steps late costs only pad tokens.
DONE_CHECK_EVERY = 8


@flax.struct.dataclass
class SamplingParams:
  temperature: jax.Array  # > 0; logits are divided by it
  top_k: jax.Array  # int; 0 disables
  top_p: jax.Array  # float in (0, 1]; 1 disables
  greedy: jax.Array  # bool; argmax instead of sampling

  @classmethod
  def make(cls, temperature=1.0, top_k=0, top_p=1.0, greedy=False) -> "SamplingParams":
    return cls(jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p), jnp.bool_(greedy))


class SampleOutput(NamedTuple):
  tokens: jax.Array  # [batch, max_new_tokens] response tokens, pad after EOS
  logprobs: jax.Array  # [batch, max_new_tokens] log-prob of each token under logits / temperature
  mask: jax.Array  # [batch, max_new_tokens] 1 on generated tokens up to and including EOS (or another stop id)
  # An MoE model's routing, recorded by the static sampler for router replay (moe.stack_experts):
  # each token's experts in every layer, the prompt's then the response's, [batch, layers,
  # prompt_len + max_new_tokens, k] int32. None: a dense model, or a sampler that records none.
  experts: Any = None


def filter_logits(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
  """Sets to -inf every logit outside the top-k, then outside the top-p nucleus.

  As in Hugging Face's order: the nucleus is taken over the top-k renormalised distribution.
  Works on traced k and p by thresholding against one descending sort.
  """
  vocab = logits.shape[-1]
  ranked = jnp.sort(logits, axis=-1)[..., ::-1]
  k = jnp.where(top_k > 0, jnp.clip(top_k, 1, vocab), vocab)
  ranked = jnp.where(jnp.arange(vocab) < k, ranked, -jnp.inf)
  probs = jax.nn.softmax(ranked, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep = (mass_before < top_p) | (top_p >= 1.0)
  keep = keep & (jnp.arange(vocab) < k)
  n_keep = jnp.maximum(jnp.sum(keep, axis=-1, keepdims=True), 1)
  threshold = jnp.take_along_axis(ranked, n_keep - 1, axis=-1)
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def choose_tokens(logits: jax.Array, rng: jax.Array, params: SamplingParams, per_row: bool = False):
  """Picks one token per row; returns (tokens, log-probs under logits / temperature). `per_row`:
  `rng` holds one key per row, so a row's draw does not depend on the others in the batch."""
  scaled = logits.astype(jnp.float32) / jnp.maximum(params.temperature, 1e-6)
  # The sort behind top-k/top-p costs more than the model's step at small sizes: skip it when off.
  filtering = (params.top_k > 0) | (params.top_p < 1.0)
  filtered = jax.lax.cond(filtering, lambda x: filter_logits(x, params.top_k, params.top_p), lambda x: x, scaled)
  # jax.random.categorical's own draw (the same noise, the same tokens), with first_argmax.
  if per_row:
    noise = jax.vmap(lambda key, row: jax.random.gumbel(key, row.shape, row.dtype))(rng, filtered)
  else:
    noise = jax.random.gumbel(rng, filtered.shape, filtered.dtype)
  sampled = first_argmax(filtered + noise)
  tokens = jnp.where(params.greedy, first_argmax(scaled), sampled).astype(jnp.int32)
  return tokens, token_logprobs(scaled, tokens)


def sample(model: Transformer, params, prompts: jax.Array, prompt_mask: jax.Array, rng: jax.Array,
           sampling: SamplingParams, *, max_new_tokens: int, stop_ids: tuple, pad_id: int,
           stop_at: jax.Array | None = None) -> SampleOutput:
  """Samples continuations of left-padded prompts [batch, prompt_len].

  Stops each row at its first of `stop_ids` (included, mask 1; `is_stop`: EOS, or a chat
  checkpoint's end of turn), and the whole loop when every row has stopped (asked every
  DONE_CHECK_EVERY steps). Jit with `model`, `max_new_tokens`, `stop_ids` and `pad_id` static
  (closed over). `stop_at` [batch] (benchmarks replaying a distribution of response lengths):
  each row also stops after that many tokens, as if its EOS came there.
  Row i draws its token at step s from fold_in(fold_in(rng, i), s) (`sample_keys`): its tokens
  do not depend on the other rows, so continuous batching (models/continuous.py) draws the same.
  An MoE model's samples also hold every token's experts (`SampleOutput.experts`: router replay).
  """
  batch, prompt_len = prompts.shape
  check_length(model, prompt_len, max_new_tokens)
  params = in_compute_dtype(params, model.cfg)
  ends = segment_ends(max_new_tokens)
  cache = KVCache.empty(model.cfg, batch, prompt_len + ends[0])
  out = model.apply({"params": params}, prompts, prompt_mask, cache=cache, last_logits_only=True)
  body = decode_step(model, params, sampling, stop_ids, pad_id, stop_at)
  carry = (jnp.int32(0), out.cache, out.logits[:, -1], with_prompt_experts(empty_output(batch, max_new_tokens, pad_id),
                                                                           out.router, prompt_mask),
           jnp.zeros((batch,), bool), sample_keys(rng, batch))
  for end in ends:
    carry = (carry[0], grown(carry[1], prompt_len + end), *carry[2:])
    carry = decode_until(end, body, carry)
  return carry[3]


def check_length(model: Transformer, prompt_len: int, max_new_tokens: int) -> None:
  """Learned positions end at max_len (past it the embedding would be clamped, silently)."""
  if model.cfg.position == "learned" and prompt_len + max_new_tokens > model.cfg.max_len:
    raise ValueError(f"prompt {prompt_len} + {max_new_tokens} new tokens exceed max_len {model.cfg.max_len}")


def sample_keys(rng: jax.Array, rows: int) -> jax.Array:
  """Each sample's own key [rows]: fold_in(rng, row), rng the rollout's (seed and iteration);
  a row is a (prompt, sample) pair (prompts are repeated k times, in order)."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, jnp.arange(rows))


def extend(model: Transformer, params, cache: RaggedCache, tokens: jax.Array, mask: jax.Array, rng: jax.Array,
           sampling: SamplingParams, *, max_new_tokens: int, stop_ids: tuple, pad_id: int,
           live: jax.Array | None = None) -> tuple[SampleOutput, RaggedCache]:
  """Continues each row of a ragged cache: prefills `tokens` [batch, block] (right-padded, `mask`
  1 on the real ones, at least one per live row) from the row's length, then samples up to
  `max_new_tokens` for the `live` rows (default all; the others stay done). Returns (the samples,
  the cache holding the prefilled and the sampled tokens). A multi-turn trajectory's next turn:
  only its new tokens are prefilled. The cache needs room for block + max_new_tokens past each
  row's length. `rng` [batch]: each row's own key (its draw at step s from fold_in(key, s)), so
  a row samples the same tokens whatever rows share its batch. A row stops as `sample`'s do."""
  batch = tokens.shape[0]
  params = in_compute_dtype(params, model.cfg)
  last = jnp.maximum(jnp.sum(mask, axis=1) - 1, 0)
  out = model.apply({"params": params}, tokens, mask, cache=cache, logits_at=last)
  done = jnp.zeros((batch,), bool) if live is None else ~live
  carry = (jnp.int32(0), out.cache, out.logits[:, 0], empty_output(batch, max_new_tokens, pad_id), done, rng)
  carry = decode_until(max_new_tokens, decode_step(model, params, sampling, stop_ids, pad_id), carry)
  return carry[3], carry[1]


def with_prompt_experts(result: SampleOutput, router, prompt_mask) -> SampleOutput:
  """`result` holding an MoE model's experts (`router`: the prefill's routing) in its prompt
  columns, 0 at the pads, the response's to be written by the decode steps (`recorded`); a dense
  model's (None) unchanged: it records nothing."""
  if router is None:
    return result
  prompt = real_only(moe.stack_experts(router), prompt_mask)
  response = jnp.zeros((*prompt.shape[:2], result.tokens.shape[1], prompt.shape[-1]), jnp.int32)
  return result._replace(experts=jnp.concatenate([prompt, response], axis=2))


def real_only(experts: jax.Array, mask: jax.Array) -> jax.Array:
  """`experts` [batch, layers, time, k] with 0 where `mask` [batch, time] is 0 (a pad, or a row
  already done): what the pads route to depends on the batch (its longest row, when its loop
  stops), and no sampler can record the same there; they are masked from every loss."""
  return jnp.where(mask.astype(bool)[:, None, :, None], experts, 0)


def recorded(result: SampleOutput, router, step, alive) -> SampleOutput:
  """`result` with the experts of the token written at `step` (its decode pass's `router`; 0 for
  the rows not `alive`), if it records any."""
  if result.experts is None:
    return result
  column = result.experts.shape[2] - result.tokens.shape[1] + step
  experts = real_only(moe.stack_experts(router), alive[:, None])
  return result._replace(experts=jax.lax.dynamic_update_slice_in_dim(result.experts, experts, column, axis=2))


def empty_output(batch: int, max_new_tokens: int, pad_id: int) -> SampleOutput:
  return SampleOutput(jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
                      jnp.zeros((batch, max_new_tokens), jnp.float32), jnp.zeros((batch, max_new_tokens), jnp.int32))


def is_stop(tokens, stop_ids: tuple):
  """True where a token ends a response: any of `stop_ids`, the tokenizer's (EOS first, then a
  chat checkpoint's end of turn, which generation_config.json lists with its EOS: Gemma 3 IT's
  <end_of_turn>). jax or numpy arrays. An OR of equalities over a static set of a few ids: with
  EOS alone, the one comparison it always was, so the compiled samplers do not change."""
  ends = tokens == stop_ids[0]
  for stop in stop_ids[1:]:
    ends = ends | (tokens == stop)
  return ends


def decode_step(model: Transformer, params, sampling: SamplingParams, stop_ids: tuple, pad_id: int, stop_at=None):
  """One decode step on the carry (step, cache, logits, result, done, keys): a token for each
  row not done (pad for the others), its log-prob and mask written at `step`, then fed through
  the model (its cache: a KVCache or a RaggedCache). `stop_at`, `stop_ids`: `sample`'s. `keys`:
  one per row, each step's draw from fold_in(key, step)."""
  def body(carry):
    step, cache, logits, result, done, rng = carry
    token, logprob = choose_tokens(logits, jax.vmap(jax.random.fold_in, in_axes=(0, None))(rng, step), sampling, True)
    token = jnp.where(done, pad_id, token)
    alive = ~done
    result = result._replace(tokens=result.tokens.at[:, step].set(token),
                             logprobs=result.logprobs.at[:, step].set(jnp.where(alive, logprob, 0.0)),
                             mask=result.mask.at[:, step].set(alive.astype(jnp.int32)))
    done = done | is_stop(token, stop_ids) | (False if stop_at is None else step + 1 >= stop_at)
    out = model.apply({"params": params}, token[:, None], alive[:, None], cache=cache)
    return step + 1, out.cache, out.logits[:, -1], recorded(result, out.router, step, alive), done, rng
  return body


def decode_until(end: int, step_fn, carry):
  """`step_fn` until step `end` or until every row is done (asked every DONE_CHECK_EVERY
  steps). carry: (step, cache, logits, result, done, rng)."""
  def steps_between_checks(carry):
    limit = jnp.minimum(carry[0] + DONE_CHECK_EVERY, end)
    return jax.lax.while_loop(lambda c: c[0] < limit, step_fn, carry)

  return jax.lax.while_loop(lambda c: (c[0] < end) & ~jnp.all(c[4]), steps_between_checks, carry)


def segment_ends(max_new_tokens: int) -> list[int]:
  """Where the decode loop stops to lengthen the cache. Each step reads the whole cache, so a
  cache sized for the last token wastes bandwidth early on: in 4 segments, each with a cache
  just long enough for it, a step reads 0.81 of the full cache on average (256 + 256 tokens).
  Short generations keep one segment (each segment compiles the step once more)."""
  segments = max(1, min(4, max_new_tokens // 64))
  return [-(-max_new_tokens * (i + 1) // segments) for i in range(segments)]


def grown(cache: KVCache, length: int) -> KVCache:
  """The cache with free slots appended up to `length` (no-op when it is that long)."""
  extra = length - cache.mask.shape[1]
  if extra == 0:
    return cache
  widen = lambda x: jnp.pad(x, [(0, 0), (0, 0), (0, extra), (0, 0)])  # [batch, kv_heads, length, head_dim]
  return KVCache(tuple(map(widen, cache.keys)), tuple(map(widen, cache.values)),
                 jnp.pad(cache.mask, [(0, 0), (0, extra)]), cache.index)


def in_compute_dtype(params, cfg):
  """Weight matrices in the compute dtype, cast once rather than at every decode step (flax
  casts them to it before each matmul anyway, so the logits are the same; a step then reads
  half the weight bytes under bf16 compute). Vectors (norms, biases) stay as they are."""
  if cfg.compute_dtype == cfg.weight_dtype:
    return params
  return jax.tree.map(lambda p: p.astype(cfg.compute_dtype) if p.ndim >= 2 else p, params)
