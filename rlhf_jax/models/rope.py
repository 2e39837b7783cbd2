"""Rotary frequencies with Hugging Face's rope scaling (transformers' modeling_rope_utils.py):
`default`, `linear`, `dynamic` (NTK), `llama3` (Llama 3.1-3.3) and `yarn`, with YaRN's attention
factor on cos and sin. `scaling` is a model's `rope_scaling` as a dict: its `rope_type` and the
type's fields (`factor`, `low_freq_factor`, `high_freq_factor`, `original_max_position_embeddings`,
`beta_fast`, `beta_slow`, `attention_factor`, `mscale`, `mscale_all_dim`, `truncate`).
"""

import math

import jax
import jax.numpy as jnp

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
# The fields each type reads (original_max_position_embeddings is dynamic's max_position_embeddings).
FIELDS = {"default": (), "linear": ("factor",), "dynamic": ("factor", "original_max_position_embeddings"),
          "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
          "yarn": ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor",
                   "mscale", "mscale_all_dim", "truncate")}


def frequencies(head_dim: int, theta: float, scaling: dict, positions: jax.Array) -> tuple:
  """(inverse frequencies [head_dim // 2], the factor on cos and sin) at these positions
  (dynamic scaling reads the longest: max(positions) + 1)."""
  kind = scaling.get("rope_type", "default")
  exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  inv = 1.0 / theta ** exponents
  if kind == "linear":
    return inv / scaling["factor"], 1.0
  if kind == "dynamic":
    factor, original = scaling["factor"], scaling["original_max_position_embeddings"]
    length = jnp.maximum(jnp.max(positions).astype(jnp.float32) + 1, original)
    base = theta * (factor * length / original - (factor - 1)) ** (head_dim / (head_dim - 2))
    return 1.0 / base ** exponents, 1.0
  if kind == "llama3":
    return llama3(inv, scaling), 1.0
  if kind == "yarn":
    return yarn(head_dim, theta, inv, scaling)
  return inv, 1.0


def llama3(inv: jax.Array, scaling: dict) -> jax.Array:
  """Llama 3.1's: long wavelengths divided by the factor, short ones kept, a smooth blend between."""
  factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
  context = scaling["original_max_position_embeddings"]
  wavelength = 2 * math.pi / inv
  scaled = jnp.where(wavelength > context / low, inv / factor, inv)
  smooth = (context / wavelength - low) / (high - low)
  blended = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelength >= context / high) & (wavelength <= context / low)
  return jnp.where(medium, blended, scaled)


def yarn(head_dim: int, theta: float, inv: jax.Array, scaling: dict) -> tuple:
  """YaRN (Peng et al. 2023): interpolated below a ramp over the dimensions, extrapolated above
  it, and cos and sin scaled by 0.1 ln(factor) + 1 (or the mscale ratio, or attention_factor)."""
  factor, context = scaling["factor"], scaling["original_max_position_embeddings"]
  attention = scaling.get("attention_factor")
  if attention is None:
    mscale = lambda scale, m=1.0: 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
    both = scaling.get("mscale") and scaling.get("mscale_all_dim")
    attention = mscale(factor, scaling["mscale"]) / mscale(factor, scaling["mscale_all_dim"]) if both else mscale(factor)
  correction = lambda rotations: head_dim * math.log(context / (rotations * 2 * math.pi)) / (2 * math.log(theta))
  low, high = correction(scaling.get("beta_fast") or 32), correction(scaling.get("beta_slow") or 1)
  if scaling.get("truncate", True):
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, head_dim - 1)
  high = high + 0.001 if low == high else high  # no singular ramp
  ramp = jnp.clip((jnp.arange(head_dim // 2, dtype=jnp.float32) - low) / (high - low), 0, 1)
  extrapolated = 1 - ramp
  return inv / factor * (1 - extrapolated) + inv * extrapolated, float(attention)
