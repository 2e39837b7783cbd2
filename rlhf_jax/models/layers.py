"""Transformer building blocks. Every parameter names its logical axes, never mesh axes.

Logical axis names: vocab, embed, mlp, heads, kv_heads, head_dim, positions, expert (models/moe.py).
`rlhf_jax.sharding` maps them to mesh axes through rules in the config.
"""

import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from rlhf_jax.models import lora, paged, rope
from rlhf_jax.models.config import ModelConfig
from rlhf_jax.models.moe import MoeMlp
from rlhf_jax.sharding import constrain

partitioned = nn.with_logical_partitioning


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def weight_product(x, kernel, in_dims: int = 1):
  """x's last `in_dims` axes contracted with kernel's first (DenseGeneral's product), whose
  backward pass forms the kernel's gradient as the narrower operand transposed times the wider.

  The gradient contracts the batch and time axes, the major axes of both x and the output's
  gradient, and XLA's CPU matmuls take a left operand contracted on its minor axis only, so one
  of the two is copied transposed first. JAX's own rule always copies the output's gradient: for
  an MLP's up-projection [rows, 4 d] where x is [rows, d], and for the stacked q/k/v [rows, 3 d].
  """
  return _product(x, kernel, in_dims)


def _product(x, kernel, in_dims):
  contract = (tuple(range(x.ndim - in_dims, x.ndim)), tuple(range(in_dims)))
  return jax.lax.dot_general(x, kernel, (contract, ((), ())))


def _product_fwd(x, kernel, in_dims):
  return _product(x, kernel, in_dims), (x, kernel)


def _product_bwd(in_dims, residuals, grad):
  x, kernel = residuals
  lead = x.ndim - in_dims  # the rows' axes: batch, time
  rows = tuple(range(lead))
  grad_x = jax.lax.dot_general(grad, kernel, ((tuple(range(lead, grad.ndim)), tuple(range(in_dims, kernel.ndim))),
                                              ((), ())))
  if math.prod(x.shape[lead:]) <= math.prod(grad.shape[lead:]):  # x is the narrower: transpose it
    grad_kernel = jax.lax.dot_general(x, grad, ((rows, rows), ((), ())))
  else:  # [out..., in...], transposed back: a kernel-sized copy instead of a row-sized one
    out_dims = kernel.ndim - in_dims
    grad_kernel = jax.lax.dot_general(grad, x, ((rows, rows), ((), ())))
    grad_kernel = grad_kernel.transpose(*range(out_dims, kernel.ndim), *range(out_dims))
  return grad_x.astype(x.dtype), grad_kernel.astype(kernel.dtype)


weight_product.defvjp(_product_fwd, _product_bwd)


class Linear(nn.Module):
  """DenseGeneral's layout and names (kernel [*in, *out], bias [*out]) with logical axes on both,
  contracting x's last `in_dims` axes; with LoRA, an adapter beside the kernel (models/lora.py)."""
  cfg: ModelConfig
  features: tuple
  axes: tuple  # logical names: the kernel's input axes, then its output axes
  in_dims: int = 1
  use_bias: bool = False
  std: float | None = None

  @nn.compact
  def __call__(self, x):
    cfg, n = self.cfg, self.in_dims
    in_shape, in_axes, out_axes = x.shape[-n:], self.axes[:n], self.axes[n:]
    init = nn.initializers.normal(self.std or cfg.init_std)
    kernel = self.param("kernel", partitioned(init, self.axes), (*in_shape, *self.features), cfg.weight_dtype)
    x = x.astype(cfg.compute_dtype)
    y = weight_product(x, kernel.astype(cfg.compute_dtype), n)
    adapter = lora.adapter_params(self, cfg, self.name, in_shape, in_axes, self.features, out_axes)
    if adapter is not None:
      y = y + lora.delta(x, adapter, cfg, n)
    if self.use_bias:
      bias = self.param("bias", partitioned(nn.initializers.zeros, out_axes), self.features, cfg.weight_dtype)
      y = y + bias.astype(cfg.compute_dtype)
    return y


def dense(cfg: ModelConfig, features, axes, *, in_axes=-1, use_bias, std=None, name=None):
  """A `Linear` of `features` (an int or a tuple) contracting x's last one or two axes (`in_axes` -1 or (-2, -1))."""
  features = features if isinstance(features, tuple) else (features,)
  in_dims = 1 if isinstance(in_axes, int) else len(in_axes)
  return Linear(cfg, features, axes, in_dims, use_bias, std, name=name)


class GemmaRMSNorm(nn.Module):
  """Gemma's RMSNorm: x / rms(x) * (1 + w) in float32 (w initialised to 0), cast back after the
  product, as Hugging Face's Gemma3RMSNorm. `axis`: the scale's logical axis."""
  eps: float
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  axis: str = "embed"

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", partitioned(nn.initializers.zeros, (self.axis,)), (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed * (1.0 + scale.astype(jnp.float32))).astype(self.dtype)


def norm(cfg: ModelConfig, name=None, axis: str = "embed"):
  """The block's norm over the last axis, whose logical name is `axis`."""
  if cfg.norm == "gemma_rmsnorm":
    return GemmaRMSNorm(cfg.norm_eps, cfg.compute_dtype, cfg.weight_dtype, axis, name=name)
  if cfg.norm == "rmsnorm":
    return nn.RMSNorm(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                      scale_init=partitioned(nn.initializers.ones, (axis,)), name=name)
  return nn.LayerNorm(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                      scale_init=partitioned(nn.initializers.ones, (axis,)),
                      bias_init=partitioned(nn.initializers.zeros, (axis,)), name=name)


def head_norm(cfg: ModelConfig, name: str):
  """An RMSNorm over the last axis of [batch, time, heads, head_dim] (Qwen3's and Gemma 3's q_norm,
  k_norm; Gemma's own RMSNorm for Gemma)."""
  if cfg.norm == "gemma_rmsnorm":
    return norm(cfg, name, "head_dim")
  return nn.RMSNorm(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                    scale_init=partitioned(nn.initializers.ones, ("head_dim",)), name=name)


def rope_tables(positions: jax.Array, head_dim: int, theta: float, scaling: tuple = ()):
  """sin and cos of the rotary angles, [batch, time, 1, head_dim // 2], times the scaling's
  attention factor (models/rope.py: Llama 3's, YaRN's, linear and dynamic scaling, as Hugging
  Face computes them); computed once per forward pass and shared by every layer."""
  freqs, factor = rope.frequencies(head_dim, theta, dict(scaling), positions)
  angles = positions[..., None].astype(jnp.float32) * freqs
  return factor * jnp.sin(angles)[:, :, None, :], factor * jnp.cos(angles)[:, :, None, :]


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
  """Rotary embedding, "rotate half" layout (as in Llama's reference code).

  x: [batch, time, heads, head_dim]; sin, cos from `rope_tables`.
  """
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def attention_kernel(cfg: ModelConfig) -> str:
  """cuDNN's flash attention on a GPU with 16-bit compute (it takes no float32); otherwise xla:
  `attend`'s einsums, compiled by XLA."""
  if cfg.attention != "auto":
    return cfg.attention
  sixteen_bit = cfg.compute_dtype in (jnp.bfloat16, jnp.float16)
  return "cudnn" if sixteen_bit and jax.default_backend() == "gpu" else "xla"


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float | None = None) -> jax.Array:
  """Softmax attention with grouped-query heads; keys and values heads-major.

  q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_heads, k_len, head_dim] (the KV
  cache's layout: every dot below has its batch axes leading, so XLA never transposes the
  cache, which at decode time is by far the largest operand; the full forward transposes its
  k and v to it); mask: [batch, 1, q_len, k_len]; `scale` on the scores: head_dim^-1/2 unless given.
  """
  b, t, h, d = q.shape
  groups = h // k.shape[1]
  q = q.reshape(b, t, k.shape[1], groups, d).transpose(0, 2, 3, 1, 4)  # [b, kv, g, t, d]
  # Scores in float32 also from 16-bit q and k, as jax.nn.dot_product_attention does.
  scores = jnp.einsum("bkgtd,bksd->bkgts", q, k, preferred_element_type=jnp.float32) * (d ** -0.5 if scale is None else scale)
  scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bksd->bkgtd", probs, v)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


class Projection(nn.Module):
  """The weights of one of the query / key / value projections (DenseGeneral's layout and
  names: kernel [embed, heads, head_dim], bias [heads, head_dim]) and its LoRA adapter (or
  None); `project_qkv` applies them."""
  cfg: ModelConfig
  heads: int
  axis: str  # heads or kv_heads
  use_bias: bool

  @nn.compact
  def __call__(self):
    cfg = self.cfg
    shape, axes = (cfg.d_model, self.heads, cfg.dim_per_head), ("embed", self.axis, "head_dim")
    kernel = self.param("kernel", partitioned(nn.initializers.normal(cfg.init_std), axes), shape, cfg.weight_dtype)
    bias = (self.param("bias", partitioned(nn.initializers.zeros, axes[1:]), shape[1:], cfg.weight_dtype)
            if self.use_bias else None)
    return kernel, bias, lora.adapter_params(self, cfg, self.name, shape[:1], axes[:1], shape[1:], axes[1:])


def project_qkv(cfg: ModelConfig, x, projections, x_query=None):
  """q, k, v [batch, time, heads, head_dim]; q from `x_query` if given (a subset of x's tokens).
  Otherwise, without grouped-query heads, the three kernels are stacked into one matmul: three
  small matmuls cost ~1.3x as much on a CPU (W1, W3 benchmarks). The stack's new axis is
  unsharded, so each kernel keeps its sharding."""
  weights = [p() for p in projections]
  x = x.astype(cfg.compute_dtype)
  inputs = (x if x_query is None else x_query.astype(cfg.compute_dtype), x, x)
  if cfg.kv_heads != cfg.n_heads or x_query is not None:
    ys = [project(h, kernel, bias, cfg) for h, (kernel, bias, _) in zip(inputs, weights)]
  else:
    kernels, biases, _ = zip(*weights)
    stacked = (jnp.stack(kernels, axis=1), None if biases[0] is None else jnp.stack(biases))
    y = project(x, *stacked, cfg)
    ys = [y[:, :, i] for i in range(3)]
  return [y if adapter is None else y + lora.delta(h, adapter, cfg)
          for y, h, (_, _, adapter) in zip(ys, inputs, weights)]


def project(x, kernel, bias, cfg: ModelConfig):
  """x [batch, time, embed] times kernel [embed, ...]."""
  y = weight_product(x, kernel.astype(cfg.compute_dtype), 1)
  return y if bias is None else y + bias.astype(cfg.compute_dtype)


class Attention(nn.Module):
  """Causal self-attention with optional grouped-query heads and a per-layer KV cache.

  `rope` is None (learned positions) or the (sin, cos) tables of `rope_tables`.
  `kv_cache` is None (full forward) or (keys, values, index): keys/values
  [batch, kv_heads, cache_len, head_dim], and the slot `index` where this call's
  tokens are written (a scalar; or [batch], each row's own: a ragged cache's lengths); or a
  `paged.PagedLayer` (models/paged.py).
  `mask` is the boolean attention mask [batch, 1, q_len, k_len].
  `queries` (no cache): Queries(x, rope), the tokens that query when not all do; `mask`
  is then their rows of it. `sliding`: a sliding-window layer (its mask says which keys).
  """
  cfg: ModelConfig
  sliding: bool = False

  @nn.compact
  def __call__(self, x, rope, mask, kv_cache=None, queries=None):
    cfg = self.cfg
    qkv_bias = cfg.bias in ("all", "qkv")
    q, k, v = project_qkv(cfg, x, [Projection(cfg, heads, axis, qkv_bias, name=name) for name, heads, axis in
                                   (("query", cfg.n_heads, "heads"), ("key", cfg.kv_heads, "kv_heads"),
                                    ("value", cfg.kv_heads, "kv_heads"))],
                          None if queries is None else queries.x)
    if cfg.qk_norm:  # Qwen3, Gemma 3: each head's queries and keys RMS-normalised, before rotary
      q, k = head_norm(cfg, "query_norm")(q), head_norm(cfg, "key_norm")(k)
    if rope is not None:
      q_rope = rope if queries is None else queries.rope
      q, k = apply_rope(q, *q_rope), apply_rope(k, *rope)
    scaled_attend = functools.partial(attend, scale=cfg.score_scale)
    if queries is not None:  # a few queries per row: the einsums (cuDNN's causal kernel assumes all)
      out, new_cache = scaled_attend(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask), None
    elif kv_cache is None and attention_kernel(cfg) == "cudnn":  # the mask is causal (and pads): cuDNN skips blocks
      out, new_cache = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=cfg.score_scale, is_causal=True,
                                                    implementation="cudnn"), None
    elif kv_cache is None:  # training and scoring with XLA's attention
      # `attend`'s einsums: W1-W3 steps 1.5-9% faster on a CPU than with jax.nn's (medians, same process)
      out, new_cache = scaled_attend(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask), None
    elif isinstance(kv_cache, paged.PagedLayer):
      out, new_cache = paged.attend_paged(q, k, v, mask, kv_cache, scaled_attend, cfg.score_scale, self.sliding)
    else:
      cached_k, cached_v, index = kv_cache
      k, v = (write_cache(cached, new.transpose(0, 2, 1, 3).astype(cached.dtype), index)
              for cached, new in ((cached_k, k), (cached_v, v)))
      out, new_cache = scaled_attend(q, k.astype(q.dtype), v.astype(q.dtype), mask), (k, v)
    out_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5  # GPT-2's scaled residual init
    out = dense(cfg, cfg.d_model, ("heads", "head_dim", "embed"), in_axes=(-2, -1),
                use_bias=cfg.bias == "all", std=out_std, name="out")(out)
    return out, new_cache


def write_cache(cached, new, index):
  """`new` [batch, kv_heads, q_len, head_dim] into `cached` at slot `index` (scalar), or at
  each row's own slot (`index` [batch]; the caller leaves room: a slice that would overrun the
  cache is moved back by dynamic_update_slice)."""
  if not index.ndim:
    return jax.lax.dynamic_update_slice(cached, new, (0, 0, index, 0))
  return jax.vmap(lambda c, x, at: jax.lax.dynamic_update_slice(c, x, (0, at, 0)))(cached, new, index)


class Mlp(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    use_bias = cfg.bias == "all"
    out_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5
    if cfg.gated_mlp:  # SwiGLU (Llama), GeGLU with tanh-approximated GELU (Gemma)
      gate = dense(cfg, cfg.d_ff, ("embed", "mlp"), use_bias=use_bias, name="gate")(x)
      up = dense(cfg, cfg.d_ff, ("embed", "mlp"), use_bias=use_bias, name="up")(x)
      h = (nn.silu(gate) if cfg.mlp == "swiglu" else nn.gelu(gate, approximate=True)) * up
    else:
      h = nn.gelu(dense(cfg, cfg.d_ff, ("embed", "mlp"), use_bias=use_bias, name="up")(x),
                  approximate=True)  # GPT-2 uses the tanh approximation
    h = constrain(h, ("batch", "length", "mlp"))
    return dense(cfg, cfg.d_model, ("mlp", "embed"), use_bias=use_bias, std=out_std, name="down")(h)


class Queries(NamedTuple):
  """The tokens at which a block's output is wanted, when not all are: their inputs and rotary
  tables, gathered from the row."""
  x: jax.Array  # [batch, n, d_model]
  rope: Optional[tuple]


def gather_queries(index: jax.Array, x: jax.Array, rope, mask: jax.Array):
  """`Queries` at `index`, and their rows of the attention mask [batch, 1, n, k_len]."""
  take = lambda a: jnp.take_along_axis(a, index.reshape(*index.shape, *(1,) * (a.ndim - 2)), axis=1)
  rope = None if rope is None else tuple(take(t) for t in rope)
  return Queries(take(x), rope), jnp.take_along_axis(mask, index[:, None, :, None], axis=2)


class Block(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)); with `post_norms`
  (Gemma), x + norm(attn(norm(x))), then x + norm(mlp(norm(x))). With `query_index`
  [batch, n], the output at those tokens only: keys and values still come from every token,
  so it is exact, and the rest of the block runs on n tokens per row (a reward model's last
  block needs only the scoring token's)."""
  cfg: ModelConfig
  deterministic: bool = True
  sliding: bool = False  # a sliding-window layer (Gemma 3's local layers)

  @nn.compact
  def __call__(self, x, rope, mask, kv_cache=None, query_index=None, routed=None):
    """(x, the new KV cache, the MoE layer's `moe.Routing` or None); `routed` [batch, time, k]:
    the experts an MoE layer uses instead of its router's choice (router replay)."""
    drop = nn.Dropout(self.cfg.dropout, deterministic=self.deterministic)
    normed, queries = norm(self.cfg, "attn_norm")(x), None
    if query_index is not None:
      queries, mask = gather_queries(query_index, normed, rope, mask)
      x = jnp.take_along_axis(x, query_index[..., None], axis=1)
    h, new_cache = Attention(self.cfg, self.sliding, name="attn")(normed, rope, mask, kv_cache, queries)
    x = x + drop(self.post_norm(h, "post_attn_norm"))
    normed = norm(self.cfg, "mlp_norm")(x)
    if self.cfg.n_experts:
      h, routing = MoeMlp(self.cfg, name="mlp")(normed, routed)
    else:
      h, routing = Mlp(self.cfg, name="mlp")(normed), None
    x = x + drop(self.post_norm(h, "post_mlp_norm"))
    return constrain(x, ("batch", "length", "embed")), new_cache, routing

  def post_norm(self, h, name: str):
    return norm(self.cfg, name)(h) if self.cfg.post_norms else h
