"""Decoder-only Transformer LM with optional scalar heads and a KV cache.

`Transformer.apply({"params": p}, tokens, mask)` is pure. Padding may be on either side:
positions come from the mask (exclusive cumulative sum), so a left-padded prompt and the
same prompt unpadded see the same positions.
"""

import functools
from typing import NamedTuple, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from rlhf_jax.models.config import ModelConfig
from rlhf_jax.models.head import head_logits
from rlhf_jax.models.layers import Block, dense, norm, partitioned, rope_tables
from rlhf_jax.models.paged import PagedCache
from rlhf_jax.sharding import constrain


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer, and which slots hold real (attendable) tokens."""
  keys: tuple  # per layer [batch, kv_heads, length, head_dim]
  values: tuple
  mask: jax.Array  # [batch, length] bool
  index: jax.Array  # int32 scalar: the next slot to write

  @classmethod
  def empty(cls, cfg: ModelConfig, batch: int, length: int, dtype=None) -> "KVCache":
    shape = (batch, cfg.kv_heads, length, cfg.dim_per_head)
    dtype = dtype or cfg.compute_dtype
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layers))
    return cls(keys=zeros, values=zeros, mask=jnp.zeros((batch, length), bool),
               index=jnp.zeros((), jnp.int32))


@flax.struct.dataclass
class RaggedCache:
  """Keys and values of every layer with each row's own length: row i's tokens fill slots
  0 .. lengths[i] - 1, in order and unpadded, so a row can be cut back (its length lowered:
  what follows gets overwritten) and extended from its own end by any number of tokens (a
  multi-turn trajectory's next turn: only the new tokens are prefilled). Tokens given with it
  are right-padded; their positions are the row's length onwards."""
  keys: tuple  # per layer [batch, kv_heads, length, head_dim]
  values: tuple
  lengths: jax.Array  # [batch] int32

  @classmethod
  def empty(cls, cfg: ModelConfig, batch: int, length: int, dtype=None) -> "RaggedCache":
    cache = KVCache.empty(cfg, batch, length, dtype)
    return cls(cache.keys, cache.values, jnp.zeros((batch,), jnp.int32))


class ModelOutput(NamedTuple):
  logits: Optional[jax.Array]  # [batch, time, vocab], float32
  hidden: jax.Array  # [batch, time, d_model], after the final norm
  scalars: dict  # head name -> [batch, time], float32
  cache: Optional[KVCache]
  # An MoE model's routing, one `moe.Routing` per layer (router logits [batch, time, E], experts
  # [batch, time, k]): the load-balancing loss's input, and what router replay records. None: dense.
  router: Optional[tuple] = None


def boxed_params(model: nn.Module, rng):
  """The model's params with their logical axis names (flax Partitioned boxes)."""
  return model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]


def param_shapes(model: nn.Module):
  """`boxed_params`' shapes and dtypes (ShapeDtypeStructs, boxed): no array is made."""
  return jax.eval_shape(functools.partial(boxed_params, model), jax.random.key(0))


def positions_from_mask(mask: jax.Array, segments: Optional[jax.Array] = None) -> jax.Array:
  """Position of each token = number of real tokens before it (pads get the next one); with
  `segments` (packed rows: each sequence's id, contiguous), before it in its own sequence."""
  mask = mask.astype(jnp.int32)
  before = jnp.cumsum(mask, axis=-1) - mask
  if segments is None:
    return before
  starts = jnp.concatenate([jnp.ones_like(segments[:, :1], bool), segments[:, 1:] != segments[:, :-1]], axis=-1)
  return before - jax.lax.cummax(jnp.where(starts, before, 0), axis=1)


def last_token_index(mask: jax.Array) -> jax.Array:
  """Each row's last real token (left or right padding), [batch]."""
  return mask.shape[-1] - 1 - jnp.argmax(jnp.flip(mask.astype(bool), axis=-1), axis=-1)


def sequence_scalars(params, tokens, mask, *, model, head: str = "reward") -> jax.Array:
  """The scalar head's value at each sequence's last real token, [batch] (a reward model's score);
  the model's last block runs on that token alone (`query_index`: exact, about a fifth less
  work for a 4-layer model)."""
  out = model.apply({"params": params}, tokens, mask, query_index=last_token_index(mask)[:, None],
                    with_logits=False)
  return out.scalars[head][:, 0]


def attention_mask(mask: jax.Array, cache: Optional[KVCache], segments: Optional[jax.Array] = None,
                   shared: Optional[jax.Array] = None):
  """Boolean [batch, 1, q_len, k_len] causal mask over real keys (of the query's own segment,
  in a packed row, and the `shared` keys of the segment before it), and the cache's new mask."""
  q_len = mask.shape[1]
  if cache is None:
    key_valid, q_index = mask, jnp.arange(q_len)
  else:
    key_valid = jax.lax.dynamic_update_slice(cache.mask, mask, (0, cache.index))
    q_index = cache.index + jnp.arange(q_len)
  k_index = jnp.arange(key_valid.shape[1])
  causal = k_index[None, :] <= q_index[:, None]
  allowed = causal[None, None] & key_valid[:, None, None, :]
  if segments is not None:
    own = segments[:, :, None] == segments[:, None, :]
    if shared is not None:  # a pair's rejected sequence reads the prompt its chosen one holds
      own |= shared.astype(bool)[:, None, :] & (segments[:, :, None] == segments[:, None, :] + 1)
    allowed &= own[:, None]
  return allowed, key_valid


def updated_cache(cache, keys: tuple, values: tuple, mask, cache_mask):
  """The cache after this call's tokens (mask [batch, time]) were written: its layers' new keys and
  values, and each row's length (ragged, paged) or the key mask and next slot (KVCache); None
  without a cache."""
  if isinstance(cache, PagedCache):
    return cache.replace(keys=keys, values=values, lengths=cache.lengths + jnp.sum(mask, axis=1, dtype=jnp.int32))
  if isinstance(cache, RaggedCache):
    return RaggedCache(keys, values, cache.lengths + jnp.sum(mask, axis=1, dtype=jnp.int32))
  if cache is not None:
    return KVCache(keys, values, cache_mask, cache.index + mask.shape[1])
  return None


def positions_and_masks(cfg: ModelConfig, tokens, mask, cache, positions, segments, shared) -> tuple:
  """(positions [batch, time], the attention mask [batch, 1, time, keys], a sliding layer's (None
  without a window), and a KVCache's new key mask (None for a ragged or paged cache))."""
  paged = isinstance(cache, PagedCache)
  if paged or isinstance(cache, RaggedCache):  # right-padded tokens from each row's length on
    positions = cache.lengths[:, None] + jnp.arange(tokens.shape[1])
    key_positions = jnp.arange(cache.capacity if paged else cache.keys[0].shape[2])[None]
    attn_mask, cache_mask = (key_positions[:, None] <= positions[:, :, None])[:, None], None  # keys seen after
  else:
    if positions is None:
      offset = 0 if cache is None else jnp.sum(cache.mask, axis=-1, keepdims=True)
      positions = offset + positions_from_mask(mask, segments)
    attn_mask, cache_mask = attention_mask(mask, cache, segments, shared)
    key_positions = positions if cache is None else positions_from_mask(cache_mask)
  return positions, attn_mask, sliding_window_mask(attn_mask, positions, key_positions, cfg.sliding_window), cache_mask


def sliding_window_mask(attn_mask, positions, key_positions, window: int):
  """`attn_mask` less the keys more than `window - 1` positions before each query (a sliding
  layer's: Hugging Face's `q - k < window`); None without a window. positions [batch, q_len],
  key_positions [batch or 1, k_len]: distances in positions, so padding between tokens never counts."""
  if not window:
    return None
  near = positions[:, :, None] - key_positions[:, None, :] < window
  return attn_mask & near[:, None]


def layer_ropes(cfg: ModelConfig, positions):
  """{False: a full layer's rotary tables, True: a sliding layer's} (the same unless
  rope_local_theta is set: Gemma 3's local base, no scaling); None for learned positions."""
  if cfg.position != "rope":
    return {False: None, True: None}
  full = rope_tables(positions, cfg.dim_per_head, cfg.rope_theta, cfg.rope_scaling)
  local = rope_tables(positions, cfg.dim_per_head, cfg.rope_local_theta) if cfg.rope_local_theta else full
  return {False: full, True: local}


class Transformer(nn.Module):
  cfg: ModelConfig
  deterministic: bool = True  # False turns dropout on (needs a "dropout" rng)

  @nn.compact
  def __call__(self, tokens, mask=None, *, cache: Optional[KVCache] = None, positions=None, segments=None,
               shared=None, query_index=None, with_logits: bool = True,
               last_logits_only: bool = False, logits_at=None, routed=None) -> ModelOutput:
    """tokens, mask: [batch, time]. With a cache, tokens are written at slot cache.index (a
    RaggedCache's or PagedCache's: each row's length on).
    `segments` [batch, time]: packed rows' sequence ids (contiguous; no cache): each token
    attends within its sequence, whose positions start at 0 (unless `positions` are given).
    `shared` [batch, time] (with segments): tokens the next segment attends to as well (a
    preference pair's prompt, held once: data/batches.py's `share_prompt`).
    `query_index` [batch, n] (no cache): the outputs at those tokens only, [batch, n, ...]; the
    last block runs its queries, MLP and heads on them alone (exact: a reward model's score).
    `last_logits_only`: logits of the last position alone, [batch, 1, vocab] (a prefill needs
    no more, and the whole prompt's would be the largest array of sampling). `logits_at`
    [batch]: the logits of that position of each row alone, [batch, 1, vocab] (a right-padded
    block's last real token). `routed` (an MoE model): each layer's experts [batch, time, k] to
    use instead of its router's choice (router replay; a sequence or an array [layers, ...])."""
    cfg = self.cfg
    mask = jnp.ones(tokens.shape, bool) if mask is None else mask.astype(bool)
    paged = isinstance(cache, PagedCache)
    ragged = paged or isinstance(cache, RaggedCache)
    positions, attn_mask, local_mask, cache_mask = positions_and_masks(cfg, tokens, mask, cache, positions, segments,
                                                                       shared)

    embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                     embedding_init=partitioned(nn.initializers.normal(cfg.init_std), ("vocab", "embed")),
                     name="embed")
    x = embed(tokens)
    if cfg.embed_scale:  # Gemma: sqrt(d) rounded to the weights' dtype first, as Hugging Face's
      x = x * jnp.asarray(cfg.d_model ** 0.5, cfg.weight_dtype).astype(x.dtype)
    if cfg.position == "learned":
      x = x + nn.Embed(cfg.max_len, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                       embedding_init=partitioned(nn.initializers.normal(0.01), ("positions", "embed")),
                       name="pos_embed")(positions)
    x = nn.Dropout(cfg.dropout, deterministic=self.deterministic)(x)
    x = constrain(x, ("batch", "length", "embed"))

    ropes = layer_ropes(cfg, positions)
    block = nn.remat(Block) if cfg.remat else Block
    new_keys, new_values, routings = [], [], []
    for i in range(cfg.n_layers):
      if paged:
        layer_cache = cache.layer(i)
      elif cache is not None:
        layer_cache = (cache.keys[i], cache.values[i], cache.lengths if ragged else cache.index)
      else:
        layer_cache = None
      last = query_index if i == cfg.n_layers - 1 else None
      sliding = cfg.is_sliding(i)
      x, kv, routing = block(cfg, self.deterministic, sliding, name=f"layer_{i}")(
          x, ropes[sliding], local_mask if sliding else attn_mask, layer_cache, last,
          None if routed is None else routed[i])
      routings.append(routing)
      if kv is not None:
        new_keys.append(kv[0])
        new_values.append(kv[1])
    hidden = norm(cfg, "final_norm")(x)

    new_cache = updated_cache(cache, tuple(new_keys), tuple(new_values), mask, cache_mask)
    if logits_at is not None:
      hidden_for_logits = jnp.take_along_axis(hidden, logits_at[:, None, None], axis=1)
    else:
      hidden_for_logits = hidden[:, -1:] if last_logits_only else hidden
    logits = self._logits(hidden_for_logits, embed) if with_logits else None
    router = tuple(routings) if cfg.n_experts else None
    return ModelOutput(logits, hidden, self._scalar_heads(hidden), new_cache, router)

  def _logits(self, hidden, embed):
    cfg = self.cfg
    # Both products take weight_product's gradient. lm_head: DenseGeneral's params; never a LoRA target.
    if cfg.tie_embeddings:
      return head_logits(hidden, embed.embedding.T, cfg.compute_dtype)
    logits = dense(cfg, cfg.vocab_size, ("embed", "vocab"), use_bias=False, name="lm_head")(hidden)
    return constrain(logits, ("batch", "length", "vocab")).astype(jnp.float32)

  def _scalar_heads(self, hidden):
    """Scalar heads (reward, value): N(0, 1/sqrt(d+1)) init as in Huang et al. 2024. A head the
    params lack is not computed: LoRA's base (the reference) holds no heads (models/lora.py)."""
    d = self.cfg.d_model
    scalars = {}
    params = self.variables.get("params", {})
    for head in self.cfg.heads:
      if not self.is_initializing() and f"{head}_head" not in params:
        continue
      out = nn.DenseGeneral(1, dtype=jnp.float32, param_dtype=self.cfg.weight_dtype, name=f"{head}_head",
                            kernel_init=partitioned(nn.initializers.normal(1 / (d + 1) ** 0.5),
                                                    ("embed", None)),
                            bias_init=partitioned(nn.initializers.zeros, (None,)))(hidden)
      scalars[head] = out[..., 0]
    return scalars
