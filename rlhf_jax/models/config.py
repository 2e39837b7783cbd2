"""The model's hyperparameters as one frozen (hashable, jit-static) dataclass."""

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

_CHOICES = {
    "position": ("learned", "rope"),
    # gemma_rmsnorm: Gemma's RMSNorm, x / rms(x) * (1 + w) in float32, w initialised to 0
    "norm": ("layernorm", "rmsnorm", "gemma_rmsnorm"),
    "mlp": ("gelu", "swiglu", "geglu"),
    "bias": ("all", "none", "qkv"),
    "attention": ("auto", "xla", "cudnn"),
    "dtype": ("float32", "bfloat16", "float16"),
    "param_dtype": ("float32", "bfloat16"),
}


LAYER_TYPES = ("full_attention", "sliding_attention")  # Hugging Face's names

# The projections LoRA can adapt, by module name: attention's query, key, value and output, the MLP's.
LORA_TARGETS = ("query", "key", "value", "out", "gate", "up", "down")
LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_targets")


def padded_vocab(tokenizer_vocab: int, multiple: int = 128) -> int:
  """Vocabulary rounded up so the embedding splits evenly over tensor-parallel devices and
  fills the accelerator's tiles (GPT-2's 50257 -> 50304). Extra rows are never targets."""
  return -(-tokenizer_vocab // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Decoder-only Transformer. GPT-2 and Llama blocks differ only in these switches.

  GPT-2: position=learned, norm=layernorm, mlp=gelu, bias=all, tie_embeddings=True.
  Llama: position=rope, norm=rmsnorm, mlp=swiglu, bias=none, tie_embeddings=False,
  n_kv_heads < n_heads for grouped-query attention. Qwen2 is Llama with bias=qkv; Qwen3 is
  Llama with qk_norm (an RMSNorm over each head's queries and keys, before rotary).
  Gemma 3: norm=gemma_rmsnorm, post_norms, mlp=geglu, qk_norm, embed_scale,
  query_pre_attn_scalar, and sliding-window layers (`layer_types`) with their own rope base.
  """
  vocab_size: int
  d_model: int = 128
  n_layers: int = 4
  n_heads: int = 4
  n_kv_heads: int = 0  # 0 means n_heads (plain multi-head attention)
  head_dim: int = 0  # 0 means d_model // n_heads
  d_ff: int = 512
  max_len: int = 128
  position: str = "learned"
  rope_theta: float = 10000.0
  # Hugging Face's rope scaling as (field, value) pairs: rope_type and its fields (models/rope.py); () none.
  rope_scaling: tuple = ()
  qk_norm: bool = False
  # Gemma 3's local layers: each layer's type ("full_attention" or "sliding_attention"; () all
  # full), a sliding layer's queries seeing the last `sliding_window` positions (themselves
  # included), rotated with base `rope_local_theta` (0: rope_theta) and no rope scaling.
  layer_types: tuple = ()
  sliding_window: int = 0
  rope_local_theta: float = 0.0
  embed_scale: bool = False  # embeddings times sqrt(d_model) (Gemma)
  post_norms: bool = False  # a norm after attention and after the MLP too, before each residual add (Gemma 2, 3)
  query_pre_attn_scalar: int = 0  # attention scores scaled by its -1/2 power (Gemma); 0: head_dim
  norm: str = "layernorm"
  norm_eps: float = 1e-5
  mlp: str = "gelu"
  bias: str = "all"
  tie_embeddings: bool = True
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  remat: bool = False
  # The full-sequence attention kernel: cudnn (flash attention; GPU, 16-bit compute), xla (any
  # device), or auto (cudnn where it runs, else xla). Decoding with the KV cache is always xla.
  attention: str = "auto"
  # Losses read the LM head `logits_chunk` positions at a time, each chunk's logits recomputed in
  # the backward pass, so the [batch, time, vocab] logits never exist (models/head.py); 0: at once.
  logits_chunk: int = 0
  dropout: float = 0.0
  init_std: float = 0.02
  heads: tuple[str, ...] = ()  # scalar heads on the final hidden state, e.g. ("value",)
  # LoRA (Hu et al. 2021; models/lora.py): adapters of this rank on the `lora_targets`
  # projections, scaled by alpha / rank; 0 is full fine-tuning.
  lora_rank: int = 0
  lora_alpha: float = 64.0
  lora_targets: tuple[str, ...] = LORA_TARGETS
  # Mixture of experts (models/moe.py; Qwen3-MoE, Mixtral): n_experts SwiGLU experts of hidden
  # size d_expert (0: d_ff) in every block, experts_per_token of them per token, their gates
  # renormalised iff norm_topk_prob; router_aux_coef weighs the load-balancing loss. 0: dense MLP.
  n_experts: int = 0
  experts_per_token: int = 2
  d_expert: int = 0
  norm_topk_prob: bool = True
  router_aux_coef: float = 0.0

  def __post_init__(self):
    for field, choices in _CHOICES.items():
      if getattr(self, field) not in choices:
        raise ValueError(f"model.{field}={getattr(self, field)!r}: choose one of {choices}")
    if self.n_heads % self.kv_heads:
      raise ValueError(f"model.n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
    if not self.head_dim and self.d_model % self.n_heads:
      raise ValueError(f"model.d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
    unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
    if unknown:
      raise ValueError(f"lora.targets: unknown {unknown}; choose among {LORA_TARGETS}")
    if self.lora_rank < 0:
      raise ValueError(f"lora.rank={self.lora_rank} must be >= 0 (0: full fine-tuning)")
    if self.logits_chunk < 0:
      raise ValueError(f"model.logits_chunk={self.logits_chunk} must be >= 0 (0: every position at once)")
    self.check_layer_types()
    if self.vocab_size <= 0:
      raise ValueError(f"model.vocab_size={self.vocab_size} must be positive")
    if self.n_experts:
      check_experts(self)

  def check_layer_types(self):
    if self.layer_types and len(self.layer_types) != self.n_layers:
      raise ValueError(f"model.layer_types has {len(self.layer_types)} entries for n_layers={self.n_layers}")
    if set(self.layer_types) - set(LAYER_TYPES):
      raise ValueError(f"model.layer_types={self.layer_types}: each one of {LAYER_TYPES}")
    if "sliding_attention" in self.layer_types and self.sliding_window <= 0:
      raise ValueError("model.layer_types has sliding_attention layers: set model.sliding_window > 0")

  def is_sliding(self, layer: int) -> bool:
    return bool(self.layer_types) and self.layer_types[layer] == "sliding_attention"

  @property
  def kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  @property
  def score_scale(self) -> float:
    """The factor on attention scores: head_dim^-1/2, or query_pre_attn_scalar^-1/2 (Gemma)."""
    return (self.query_pre_attn_scalar or self.dim_per_head) ** -0.5

  @property
  def gated_mlp(self) -> bool:
    """SwiGLU or GeGLU: a gate projection beside the up projection."""
    return self.mlp in ("swiglu", "geglu")

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.d_model // self.n_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self):
    return jnp.dtype(self.param_dtype)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any], **overrides) -> "ModelConfig":
    """Builds from a config mapping, rejecting keys this dataclass does not know."""
    values = {**dict(values), **overrides}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
    values["heads"] = tuple(values.get("heads", ()))
    values["layer_types"] = tuple(values.get("layer_types", ()))
    values["rope_scaling"] = tuple(tuple(pair) for pair in values.get("rope_scaling", ()))  # JSON gives lists
    values["lora_targets"] = tuple(values.get("lora_targets", LORA_TARGETS))
    return cls(**values)

  def num_params(self) -> int:
    """Parameter count, from shapes alone (no arrays are made)."""
    d, h, kv, hd, f = self.d_model, self.n_heads, self.kv_heads, self.dim_per_head, self.d_ff
    attn = d * (h + 2 * kv) * hd + h * hd * d
    mlp = d * f * (3 if self.gated_mlp else 2)
    mlp = moe_weights(self, self.n_experts) if self.n_experts else mlp  # the router and every expert
    norms = (4 if self.post_norms else 2) * d * (2 if self.norm == "layernorm" else 1) + (2 * hd if self.qk_norm else 0)
    biases = 0
    if self.bias in ("all", "qkv"):
      biases += (h + 2 * kv) * hd
    if self.bias == "all":
      biases += d + f * (2 if self.gated_mlp else 1) + d
    per_layer = attn + mlp + norms + biases
    embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    positions = self.max_len * d if self.position == "learned" else 0
    final_norm = d * (2 if self.norm == "layernorm" else 1)
    heads = len(self.heads) * (d + 1)
    return self.n_layers * per_layer + embed + positions + final_norm + heads

  @property
  def expert_dim(self) -> int:
    return self.d_expert or self.d_ff

  def active_params(self) -> int:
    """Parameters one token uses: `num_params` with experts_per_token experts of each MoE layer
    rather than all (the router counted whole). The embedding and the LM head count whole, as
    Qwen's and Mistral's model cards count them (Qwen3-30B-A3B: 3.3B of 30.5B; Mixtral-8x7B:
    12.9B of 46.7B), though a token reads one row of the embedding. A dense model's are all of them."""
    unused = moe_weights(self, self.n_experts) - moe_weights(self, self.experts_per_token)
    return self.num_params() - self.n_layers * unused if self.n_experts else self.num_params()


def moe_weights(cfg: ModelConfig, experts: int) -> int:
  """One MoE layer's weights with `experts` of its SwiGLU experts (the router whole)."""
  return experts * 3 * cfg.d_model * cfg.expert_dim + cfg.d_model * cfg.n_experts


def check_experts(cfg: ModelConfig) -> None:
  """What an MoE model needs: SwiGLU experts without biases, k <= E, no adapters on the experts."""
  if not 0 < cfg.experts_per_token <= cfg.n_experts:
    raise ValueError(f"model.experts_per_token={cfg.experts_per_token} must be in 1..n_experts={cfg.n_experts}")
  if cfg.mlp != "swiglu" or cfg.bias == "all":
    raise ValueError(f"model.n_experts={cfg.n_experts}: experts are SwiGLU without biases; set mlp=swiglu and "
                     f"bias=none or qkv (not mlp={cfg.mlp}, bias={cfg.bias})")
  if cfg.d_expert < 0 or cfg.router_aux_coef < 0:
    raise ValueError(f"model.d_expert={cfg.d_expert} and router_aux_coef={cfg.router_aux_coef} must be >= 0")
  adapted = sorted(set(cfg.lora_targets) & {"gate", "up", "down"})
  if cfg.lora_rank and adapted:
    raise ValueError(f"lora.targets {adapted}: an MoE model's experts take no LoRA adapters; "
                     "set lora.targets=('query','key','value','out')")
