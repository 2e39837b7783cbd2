"""Hugging Face `config.json` <-> our ModelConfig, for GPT-2, GPT-NeoX, the Llama family
(Llama, Mistral, Qwen2, Qwen3), its mixtures of experts (Qwen3-MoE, Mixtral) and Gemma 3 (text).

Only configs whose model our Transformer computes exactly are accepted (rope scaling of the
types models/rope.py computes: linear, dynamic, llama3, yarn); anything else (longrope, GPT-2's
per-layer attention scaling, an unknown model_type, code shipped with the checkpoint) is refused with one line naming the field, rather than loaded into a model
that would silently compute something else.
"""

import json
import os

from absl import logging

from rlhf_jax.errors import UserError
from rlhf_jax.models import rope
from rlhf_jax.models.config import ModelConfig

GPT2_TYPES = ("gpt2",)
NEOX_TYPES = ("gpt_neox",)  # GPT-2's block with rotary positions: our `tiny` preset
LLAMA_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# Gemma3ForCausalLM (270M, 1B, any text-only export), and Gemma3ForConditionalGeneration's text
# model (4B+: its `text_config`; the image parts are not read, and export writes gemma3_text).
GEMMA_TYPES = ("gemma3_text", "gemma3")
MULTIMODAL_TYPES = ("gemma3",)
# Gemma3TextConfig's defaults, which the Hub's sparse `text_config`s leave out (4B's has no vocab_size).
GEMMA3_DEFAULTS = dict(vocab_size=262_208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                       num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
                       sliding_window=4096, rms_norm_eps=1e-6, max_position_embeddings=131_072, rope_theta=1e6,
                       rope_local_base_freq=1e4)
MOE_TYPES = ("qwen3_moe", "mixtral")  # Llama-family attention, mixture-of-experts MLPs
SUPPORTED_TYPES = GPT2_TYPES + NEOX_TYPES + LLAMA_TYPES + GEMMA_TYPES + MOE_TYPES
# Keys by which a checkpoint asks to run its own Python code: never honoured.
REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code", "custom_pipelines")
# Where we put what HF's config has no field for (the reward head's bias): HF ignores it.
EXTRA_KEY = "rlhf_jax"


def read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
  if not isinstance(value, dict):
    raise UserError(f"{path} is not a JSON object")
  return value


def refuse_remote_code(config: dict, path: str) -> None:
  """Loading never runs code from the checkpoint: a config that needs its own code is refused."""
  for key in REMOTE_CODE_KEYS:
    if config.get(key):
      raise UserError(f"{path} asks for code shipped with the checkpoint ({key}); rlhf_jax never runs "
                      "checkpoint code: only GPT-2 and Llama-family models are supported")


def read_config(directory: str) -> dict:
  """config.json of a local Hugging Face model directory, checked for remote code."""
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise UserError(f"{directory} is not a Hugging Face model directory (no config.json)")
  config = read_json(path)
  refuse_remote_code(config, path)
  return config


def head_of(config: dict) -> str:
  """'lm' for a causal LM, 'reward' for a one-label *ForSequenceClassification model."""
  architectures = config.get("architectures") or []
  if not any(a.endswith("ForSequenceClassification") for a in architectures):
    return "lm"
  labels = config.get("num_labels", len(config.get("id2label") or {0: ""}))
  if labels != 1:
    raise UserError(f"{architectures[0]} with {labels} labels: only a one-label (reward) head is supported")
  return "reward"


def model_values(config: dict) -> dict:
  """ModelConfig fields of the architecture a HF config describes (compute settings left out)."""
  model_type = config.get("model_type")
  if config.get("quantization_config"):
    raise UserError("quantized checkpoints (quantization_config) are not supported")
  if model_type in GPT2_TYPES:
    values = gpt2_values(config)
  elif model_type in NEOX_TYPES:
    values = neox_values(config)
  elif model_type in LLAMA_TYPES:
    values = llama_values(config)
  elif model_type in GEMMA_TYPES:
    text = config.get("text_config") if model_type in MULTIMODAL_TYPES else config
    values = gemma3_values({**GEMMA3_DEFAULTS, **(text or {}), "model_type": "gemma3_text"})
  elif model_type in MOE_TYPES:
    values = moe_values(config)
  else:
    raise UserError(f"model_type={model_type!r} is not supported: choose a checkpoint of "
                    f"{', '.join(SUPPORTED_TYPES)}")
  values.update(init_std=float(config.get("initializer_range", 0.02)), dropout=0.0,
                heads=("reward",) if head_of(config) == "reward" else ())
  return values


def refuse_if(config: dict, key: str, default, allowed) -> None:
  value = config.get(key, default)
  if value not in allowed:
    raise UserError(f"{config.get('model_type')} config {key}={value!r} is not supported (supported: {allowed})")


def gpt2_values(config: dict) -> dict:
  refuse_if(config, "scale_attn_by_inverse_layer_idx", False, (False,))
  refuse_if(config, "reorder_and_upcast_attn", False, (False,))
  refuse_if(config, "scale_attn_weights", True, (True,))
  refuse_if(config, "add_cross_attention", False, (False,))
  # Both are tanh-approximated GELU, which our GPT-2 MLP computes.
  refuse_if(config, "activation_function", "gelu_new", ("gelu_new", "gelu_pytorch_tanh"))
  d = int(config["n_embd"])
  return dict(vocab_size=int(config["vocab_size"]), d_model=d, n_layers=int(config["n_layer"]),
              n_heads=int(config["n_head"]), n_kv_heads=0, head_dim=0, d_ff=int(config.get("n_inner") or 4 * d),
              max_len=int(config.get("n_positions", 1024)), position="learned", norm="layernorm",
              norm_eps=float(config.get("layer_norm_epsilon", 1e-5)), mlp="gelu", bias="all",
              tie_embeddings=bool(config.get("tie_word_embeddings", True)))


def rope_settings(config: dict, theta_key: str = "rope_theta", partial_key: str = "partial_rotary_factor",
                  partial_default: float = 1.0) -> dict:
  """rope_theta and rope_scaling (models/rope.py) from v5's rope_parameters or v4's rope_scaling;
  refuses rope on part of each head and the types rope.py lacks. The keys name the v4 fields
  (GPT-NeoX: rotary_emb_base, rotary_pct)."""
  sources = [dict(config.get(key) or {}) for key in ("rope_parameters", "rope_scaling")]
  kinds = [source.get("rope_type", source.get("type")) or "default" for source in sources]
  kind = next((k for k in kinds if k != "default"), "default")
  params = {**sources[0], **sources[1]} if kinds[0] == "default" else {**sources[1], **sources[0]}
  if kind not in rope.ROPE_TYPES:
    raise UserError(f"{config.get('model_type')} rope type {kind!r} is not supported (supported: "
                    f"{', '.join(rope.ROPE_TYPES)})")
  partial = params.get("partial_rotary_factor", config.get(partial_key, partial_default))
  if partial != 1.0:
    raise UserError(f"partial_rotary_factor={partial} is not supported (rope on every dimension only)")
  theta = float(params.get("rope_theta", config.get(theta_key, 10000.0)))
  if kind == "default":
    return dict(rope_theta=theta, rope_scaling=())
  if kind == "dynamic" or (kind == "yarn" and "original_max_position_embeddings" not in params):
    params["original_max_position_embeddings"] = config["max_position_embeddings"]  # what HF reads there
  if kind == "yarn" and params.get("factor") is None:
    params["factor"] = config["max_position_embeddings"] / params["original_max_position_embeddings"]
  fields = {k: params[k] for k in rope.FIELDS[kind] if params.get(k) is not None}
  return dict(rope_theta=theta, rope_scaling=(("rope_type", kind), *sorted(fields.items())))


def rope_parameters(cfg: ModelConfig) -> dict:
  """v5's rope_parameters of `cfg` (dynamic's original length is config.json's max_position_embeddings)."""
  scaling = dict(cfg.rope_scaling) or {"rope_type": "default"}
  if scaling["rope_type"] == "dynamic":
    scaling.pop("original_max_position_embeddings")
  return {**scaling, "rope_theta": cfg.rope_theta}


def neox_values(config: dict) -> dict:
  refuse_if(config, "use_parallel_residual", True, (False,))
  refuse_if(config, "attention_bias", True, (True,))
  refuse_if(config, "hidden_act", "gelu", ("gelu_new", "gelu_pytorch_tanh"))
  d = int(config["hidden_size"])
  return dict(vocab_size=int(config["vocab_size"]), d_model=d, n_layers=int(config["num_hidden_layers"]),
              n_heads=int(config["num_attention_heads"]), n_kv_heads=0, head_dim=0,
              d_ff=int(config["intermediate_size"]), max_len=int(config.get("max_position_embeddings", 2048)),
              position="rope", **rope_settings(config, "rotary_emb_base", "rotary_pct", 0.25),
              norm="layernorm", norm_eps=float(config.get("layer_norm_eps", 1e-5)), mlp="gelu", bias="all",
              tie_embeddings=bool(config.get("tie_word_embeddings", False)))


def llama_bias(config: dict) -> str:
  if config["model_type"] == "qwen2":
    return "qkv"
  if config["model_type"] == "qwen3":  # its attention_bias would put biases on q, k, v and o, but not the MLP
    refuse_if(config, "attention_bias", False, (False,))
    return "none"
  attention, mlp = bool(config.get("attention_bias", False)), bool(config.get("mlp_bias", False))
  if attention != mlp:
    raise UserError(f"attention_bias={attention} with mlp_bias={mlp} is not supported (both or neither)")
  return "all" if attention else "none"


def context_length(config: dict) -> int:
  """max_position_embeddings, or the sliding window where one is smaller: our attention is
  full, which is exactly the model's for sequences no longer than the window."""
  length = int(config.get("max_position_embeddings", 2048))
  window = config.get("sliding_window") if config.get("use_sliding_window", True) else None
  layer_types = set(config.get("layer_types") or ())
  if layer_types - {"full_attention", "sliding_attention"}:
    raise UserError(f"layer_types {sorted(layer_types)} are not supported")
  if window and int(window) < length:
    logging.warning("%s uses a %d-token sliding window: sequences longer than that are computed with "
                    "full attention here; max_len is set to the window", config["model_type"], window)
    length = int(window)
  return length


def llama_values(config: dict) -> dict:
  refuse_if(config, "hidden_act", "silu", ("silu",))
  d, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
  head_dim = int(config.get("head_dim") or d // heads)
  return dict(vocab_size=int(config["vocab_size"]), d_model=d, n_layers=int(config["num_hidden_layers"]),
              n_heads=heads, n_kv_heads=int(config.get("num_key_value_heads") or heads),
              head_dim=0 if head_dim * heads == d else head_dim, d_ff=int(config["intermediate_size"]),
              max_len=context_length(config), position="rope", **rope_settings(config), norm="rmsnorm",
              norm_eps=float(config.get("rms_norm_eps", 1e-6)), mlp="swiglu", bias=llama_bias(config),
              tie_embeddings=bool(config.get("tie_word_embeddings", False)), qk_norm=config["model_type"] == "qwen3")


def gemma3_values(config: dict) -> dict:
  """Gemma 3's text model: sliding-window layers with their own rope base among global ones."""
  for key in ("final_logit_softcapping", "attn_logit_softcapping"):
    refuse_if(config, key, None, (None,))
  refuse_if(config, "use_bidirectional_attention", False, (False, None))
  refuse_if(config, "attention_bias", False, (False,))
  refuse_if(config, "hidden_activation", "gelu_pytorch_tanh", ("gelu_pytorch_tanh",))
  layers, d = int(config["num_hidden_layers"]), int(config["hidden_size"])
  pattern = int(config.get("sliding_window_pattern", 6))  # config.json before layer_types
  layer_types = tuple(config.get("layer_types") or ("full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                                                     for i in range(layers)))
  heads = int(config["num_attention_heads"])
  head_dim = int(config.get("head_dim") or 256)
  return dict(vocab_size=int(config["vocab_size"]), d_model=d, n_layers=layers, n_heads=heads,
              n_kv_heads=int(config.get("num_key_value_heads") or heads), head_dim=0 if head_dim * heads == d else head_dim,
              d_ff=int(config["intermediate_size"]), max_len=int(config.get("max_position_embeddings", 131072)),
              position="rope", **gemma3_rope(config), norm="gemma_rmsnorm", norm_eps=float(config.get("rms_norm_eps", 1e-6)),
              mlp="geglu", bias="none", tie_embeddings=bool(config.get("tie_word_embeddings", True)), qk_norm=True,
              layer_types=layer_types, sliding_window=int(config.get("sliding_window") or 0), embed_scale=True,
              post_norms=True, query_pre_attn_scalar=int(config.get("query_pre_attn_scalar", 256)))


def gemma3_rope(config: dict) -> dict:
  """The global layers' rope (v5's rope_parameters["full_attention"], or v4's rope_theta and
  rope_scaling: Gemma 3 4B+ scale it linearly by 8) and the local layers' base, unscaled."""
  nested = config.get("rope_parameters") or {}
  if nested and "full_attention" not in nested:
    raise UserError(f"gemma3_text rope_parameters {sorted(nested)}: expected one entry per layer type")
  full = rope_settings({**config, "rope_parameters": nested.get("full_attention"),
                        "rope_theta": config.get("rope_theta", 1e6)})
  local = dict(nested.get("sliding_attention") or {})
  if local.get("rope_type", "default") != "default":
    raise UserError(f"gemma3_text sliding layers' rope type {local['rope_type']!r} is not supported (default only)")
  return dict(**full, rope_local_theta=float(local.get("rope_theta", config.get("rope_local_base_freq", 1e4))))


def moe_values(config: dict) -> dict:
  """Qwen3-MoE (Qwen3's attention) or Mixtral (Mistral's): every layer's MLP a mixture of experts."""
  qwen = config["model_type"] == "qwen3_moe"
  if qwen:  # a dense MLP in some layers
    refuse_if(config, "decoder_sparse_step", 1, (1,))
    refuse_if(config, "mlp_only_layers", [], ([], ()))
  refuse_if(config, "router_jitter_noise", 0.0, (0.0,))  # Mixtral's training-time noise: we add none
  for key in ("shared_expert_intermediate_size", "n_shared_experts", "num_shared_experts"):
    refuse_if(config, key, None, (None, 0))  # Qwen2-MoE's and DeepSeek's shared experts
  values = llama_values({**config, "model_type": "qwen3" if qwen else "mistral"})
  expert_dim = int(config["moe_intermediate_size"] if qwen else config["intermediate_size"])
  aux = float(config.get("router_aux_loss_coef", 0.001)) if config.get("output_router_logits") else 0.0
  values.update(n_experts=int(config.get("num_experts") or config["num_local_experts"]), d_expert=expert_dim,
                experts_per_token=int(config["num_experts_per_tok"]), router_aux_coef=aux,
                norm_topk_prob=bool(config.get("norm_topk_prob", False)) if qwen else True)
  return values


def moe_family(cfg: ModelConfig) -> str:
  """qwen3_moe for an MoE model with qk_norm, mixtral for one without (which always renormalises)."""
  llama_block = (cfg.position, cfg.norm, cfg.mlp, cfg.bias) == ("rope", "rmsnorm", "swiglu", "none")
  if llama_block and (cfg.qk_norm or cfg.norm_topk_prob):
    return "qwen3_moe" if cfg.qk_norm else "mixtral"
  raise UserError(f"no Hugging Face architecture computes this MoE model (position={cfg.position}, norm={cfg.norm}, "
                  f"bias={cfg.bias}, qk_norm={cfg.qk_norm}, norm_topk_prob={cfg.norm_topk_prob}): export supports "
                  "rope, rmsnorm, bias none, with qk_norm (Qwen3-MoE) or norm_topk_prob (Mixtral)")


def moe_config(cfg: ModelConfig, family: str) -> dict:
  """config.json's MoE fields; the load-balancing loss is on in HF's training iff ours is."""
  experts = dict(num_experts_per_tok=cfg.experts_per_token, router_aux_loss_coef=cfg.router_aux_coef,
                 output_router_logits=cfg.router_aux_coef > 0)
  if family == "mixtral":
    return dict(experts, num_local_experts=cfg.n_experts, intermediate_size=cfg.expert_dim, router_jitter_noise=0.0,
                sliding_window=None)
  return dict(experts, num_experts=cfg.n_experts, moe_intermediate_size=cfg.expert_dim,
              norm_topk_prob=cfg.norm_topk_prob, decoder_sparse_step=1, mlp_only_layers=[])


def weights_family(model_type: str) -> str:
  """How the checkpoint names its tensors (rlhf_jax/interop/hf_weights.py): Mistral, Qwen, the
  MoE models and Gemma 3 as Llama (Gemma's two extra norms a block: hf_weights.block_norms)."""
  return "llama" if model_type in LLAMA_TYPES + GEMMA_TYPES + MOE_TYPES else model_type


def gemma_features(cfg: ModelConfig) -> tuple:
  """What among `cfg`'s switches only Gemma 3 has (a model with some but not all is no HF model)."""
  return (cfg.post_norms, cfg.embed_scale, bool(cfg.query_pre_attn_scalar), bool(cfg.rope_local_theta),
          "sliding_attention" in cfg.layer_types)


def family_of(cfg: ModelConfig) -> str:
  """The HF model_type that computes exactly what `cfg` does, or a UserError."""
  gemma = gemma_features(cfg)
  if cfg.n_experts and not any(gemma):
    return moe_family(cfg)
  block = (cfg.position, cfg.norm, cfg.mlp)
  if cfg.n_experts:
    raise UserError("no Hugging Face architecture computes Gemma 3's block with experts")
  if block == ("rope", "gemma_rmsnorm", "geglu") and all(gemma[:3]) and cfg.qk_norm and cfg.bias == "none":
    return "gemma3_text"
  if any(gemma):
    raise UserError("no Hugging Face architecture computes this model: post_norms, embed_scale, query_pre_attn_scalar, "
                    "rope_local_theta and sliding layers are Gemma 3's, which exports with norm=gemma_rmsnorm, "
                    "mlp=geglu, qk_norm and bias none")
  plain_heads = cfg.bias == "all" and cfg.kv_heads == cfg.n_heads and cfg.dim_per_head * cfg.n_heads == cfg.d_model
  if block == ("learned", "layernorm", "gelu") and plain_heads:
    return "gpt2"
  if block == ("rope", "layernorm", "gelu") and plain_heads:
    return "gpt_neox"
  if block == ("rope", "rmsnorm", "swiglu") and not cfg.qk_norm:
    return "qwen2" if cfg.bias == "qkv" else "llama"
  if block == ("rope", "rmsnorm", "swiglu") and cfg.bias == "none":
    return "qwen3"
  raise UserError(f"no Hugging Face architecture computes this model (position={cfg.position}, norm={cfg.norm}, "
                  f"mlp={cfg.mlp}, bias={cfg.bias}, n_kv_heads={cfg.n_kv_heads}): export supports GPT-2 blocks "
                  "(layernorm, gelu, bias all; learned positions: GPT-2, rope: GPT-NeoX) and Llama blocks "
                  "(rope, rmsnorm, swiglu; with qk_norm: Qwen3, bias none), and Gemma 3's")


ARCHITECTURES = {("gpt2", "lm"): "GPT2LMHeadModel", ("gpt2", "reward"): "GPT2ForSequenceClassification",
                 ("gpt_neox", "lm"): "GPTNeoXForCausalLM", ("gpt_neox", "reward"): "GPTNeoXForSequenceClassification",
                 ("llama", "lm"): "LlamaForCausalLM", ("llama", "reward"): "LlamaForSequenceClassification",
                 ("qwen2", "lm"): "Qwen2ForCausalLM", ("qwen2", "reward"): "Qwen2ForSequenceClassification",
                 ("qwen3", "lm"): "Qwen3ForCausalLM", ("qwen3", "reward"): "Qwen3ForSequenceClassification",
                 ("gemma3_text", "lm"): "Gemma3ForCausalLM",
                 ("gemma3_text", "reward"): "Gemma3TextForSequenceClassification",
                 ("qwen3_moe", "lm"): "Qwen3MoeForCausalLM",
                 ("qwen3_moe", "reward"): "Qwen3MoeForSequenceClassification",
                 ("mixtral", "lm"): "MixtralForCausalLM", ("mixtral", "reward"): "MixtralForSequenceClassification"}


def hf_config(cfg: ModelConfig, head: str, dtype: str, specials: dict) -> dict:
  """config.json for `cfg` exported with `head` ('lm' or 'reward') in `dtype`.

  `specials`: bos_token_id / eos_token_id / pad_token_id (None where unknown)."""
  family = family_of(cfg)
  if family == "gpt2":
    config = dict(n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_ff,
                  n_positions=cfg.max_len, activation_function="gelu_new", layer_norm_epsilon=cfg.norm_eps,
                  resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=0.0, scale_attn_weights=True)
  elif family == "gpt_neox":
    rope = {**rope_parameters(cfg), "partial_rotary_factor": 1.0}
    config = dict(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                  intermediate_size=cfg.d_ff, max_position_embeddings=cfg.max_len, hidden_act="gelu_new",
                  layer_norm_eps=cfg.norm_eps, use_parallel_residual=False, attention_bias=True,
                  rope_parameters=rope, rotary_emb_base=cfg.rope_theta, rotary_pct=1.0,
                  hidden_dropout=cfg.dropout, attention_dropout=0.0)
  elif family == "gemma3_text":
    config = gemma3_config(cfg)
  else:
    rope = rope_parameters(cfg)
    config = dict(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                  num_key_value_heads=cfg.kv_heads, head_dim=cfg.dim_per_head, intermediate_size=cfg.d_ff,
                  max_position_embeddings=cfg.max_len, hidden_act="silu", rms_norm_eps=cfg.norm_eps,
                  rope_parameters=rope, rope_theta=cfg.rope_theta, attention_dropout=0.0)
    if family == "llama":
      config.update(attention_bias=cfg.bias == "all", mlp_bias=cfg.bias == "all")
    if family in ("qwen3", "qwen3_moe"):
      config.update(attention_bias=False, use_sliding_window=False)
    if family in MOE_TYPES:
      config.update(moe_config(cfg, family))
  config.update(architectures=[ARCHITECTURES[family, head]], model_type=family, vocab_size=cfg.vocab_size,
                tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std, dtype=dtype, **specials)
  if head == "reward":
    config.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
  return config


def gemma3_config(cfg: ModelConfig) -> dict:
  local = {"rope_type": "default", "rope_theta": cfg.rope_local_theta or cfg.rope_theta}
  return dict(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
              num_key_value_heads=cfg.kv_heads, head_dim=cfg.dim_per_head, intermediate_size=cfg.d_ff,
              max_position_embeddings=cfg.max_len, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=cfg.norm_eps,
              query_pre_attn_scalar=cfg.query_pre_attn_scalar, sliding_window=cfg.sliding_window or None,
              layer_types=list(cfg.layer_types or ["full_attention"] * cfg.n_layers),
              rope_parameters={"full_attention": rope_parameters(cfg), "sliding_attention": local},
              attention_bias=False, attention_dropout=0.0, final_logit_softcapping=None, attn_logit_softcapping=None)
