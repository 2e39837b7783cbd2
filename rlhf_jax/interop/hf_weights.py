"""Which Hugging Face tensor is which of our params, in both directions.

A `Group` ties one HF tensor to one or more of our params (GPT-2 keeps q, k and v in one
`c_attn` matrix) with the two pure functions between their layouts; importing runs `split`,
exporting runs `join`, and both are reshapes, transposes and slices only, so a round trip is
bit-exact. HF's `nn.Linear` stores [out, in] and GPT-2's `Conv1D` [in, out]; our kernels are
[in..., out...] with the heads as their own axis (see rlhf_jax/models/layers.py).
"""

import dataclasses
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.models.config import ModelConfig

# Buffers some checkpoints carry that are not weights (GPT-2's causal mask, rotary tables).
IGNORED = re.compile(r"(^|\.)(attn|attention)\.(masked_)?bias$|rotary_emb\.inv_freq$")
# A multimodal checkpoint's image parts, which its text model never reads (Gemma 3 4B+).
IMAGE_PARTS = re.compile(r"^(model\.)?(vision_tower|multi_modal_projector)\.")


@dataclasses.dataclass(frozen=True)
class Group:
  hf: str  # tensor name in the checkpoint
  hf_shape: tuple
  ours: tuple  # our param paths ("layer_0/attn/query/kernel", ...)
  split: Callable  # HF array -> list of our arrays (one per path)
  join: Callable  # list of our arrays -> HF array


def array_module(arrays):
  """numpy for host arrays (export), jax.numpy for device arrays (a weight push stays on the device)."""
  return jnp if isinstance(arrays[0], jax.Array) else np


def same(hf: str, path: str, shape: tuple) -> Group:
  return Group(hf, shape, (path,), lambda w: [w], lambda ours: ours[0])


def layer_norm(hf: str, ours: str, d: int) -> list:
  """A LayerNorm's weight and bias (HF `NAME.weight`, `NAME.bias`) as our `NORM/scale`, `NORM/bias`."""
  return [same(f"{hf}.weight", f"{ours}/scale", (d,)), same(f"{hf}.bias", f"{ours}/bias", (d,))]


def reshaped(hf: str, path: str, hf_shape: tuple, shape: tuple) -> Group:
  """A vector or GPT-2 Conv1D [in, out]: the same memory order as ours."""
  return Group(hf, hf_shape, (path,), lambda w: [w.reshape(shape)], lambda ours: ours[0].reshape(hf_shape))


def linear(hf: str, path: str, hf_shape: tuple, shape: tuple) -> Group:
  """A torch nn.Linear weight [out, in]: ours is its transpose, reshaped."""
  return Group(hf, hf_shape, (path,), lambda w: [w.T.reshape(shape)],
               lambda ours: ours[0].reshape(hf_shape[::-1]).T)


def stacked_columns(hf: str, paths: tuple, hf_shape: tuple, shape: tuple) -> Group:
  """GPT-2's c_attn: q, k and v side by side along the last axis."""
  n = len(paths)

  def split(w):
    return [part.reshape(shape) for part in np.split(w, n, axis=-1)]

  def join(ours):
    return array_module(ours).concatenate([o.reshape(hf_shape[:-1] + (hf_shape[-1] // n,)) for o in ours], axis=-1)

  return Group(hf, hf_shape, paths, split, join)


def interleaved_heads(hf: str, paths: tuple, hf_shape: tuple, heads: int, head_dim: int) -> Group:
  """GPT-NeoX's query_key_value: a Linear [heads * 3 * head_dim, in] (or its bias) holding
  each head's q, k and v one after the other."""
  weight = len(hf_shape) == 2

  def split(w):
    w = w.T.reshape(-1, heads, 3, head_dim) if weight else w.reshape(heads, 3, head_dim)
    return [w[..., i, :] for i in range(3)]

  def join(ours):
    stacked = array_module(ours).stack(ours, axis=-2)  # [..., heads, 3, head_dim]
    return stacked.reshape(hf_shape[::-1]).T if weight else stacked.reshape(hf_shape)

  return Group(hf, hf_shape, paths, split, join)


def neox_groups(cfg: ModelConfig, head: str, prefix: str) -> list:
  d, h, hd, f, p = cfg.d_model, cfg.n_heads, cfg.dim_per_head, cfg.d_ff, prefix
  groups = [same(f"{p}embed_in.weight", "embed/embedding", (cfg.vocab_size, d))]
  for i in range(cfg.n_layers):
    hf, ours = f"{p}layers.{i}.", f"layer_{i}/"
    qkv = tuple(f"{ours}attn/{name}" for name in ("query", "key", "value"))
    groups += [
        *layer_norm(f"{hf}input_layernorm", f"{ours}attn_norm", d),
        interleaved_heads(f"{hf}attention.query_key_value.weight", tuple(q + "/kernel" for q in qkv), (3 * d, d),
                          h, hd),
        interleaved_heads(f"{hf}attention.query_key_value.bias", tuple(q + "/bias" for q in qkv), (3 * d,), h, hd),
        linear(f"{hf}attention.dense.weight", f"{ours}attn/out/kernel", (d, d), (h, hd, d)),
        same(f"{hf}attention.dense.bias", f"{ours}attn/out/bias", (d,)),
        *layer_norm(f"{hf}post_attention_layernorm", f"{ours}mlp_norm", d),
        linear(f"{hf}mlp.dense_h_to_4h.weight", f"{ours}mlp/up/kernel", (f, d), (d, f)),
        same(f"{hf}mlp.dense_h_to_4h.bias", f"{ours}mlp/up/bias", (f,)),
        linear(f"{hf}mlp.dense_4h_to_h.weight", f"{ours}mlp/down/kernel", (d, f), (f, d)),
        same(f"{hf}mlp.dense_4h_to_h.bias", f"{ours}mlp/down/bias", (d,)),
    ]
  groups += layer_norm(f"{p}final_layer_norm", "final_norm", d)
  return groups + output_groups(cfg, head, lm_head="embed_out.weight")


def gpt2_groups(cfg: ModelConfig, head: str, prefix: str) -> list:
  d, h, hd, f, p = cfg.d_model, cfg.n_heads, cfg.dim_per_head, cfg.d_ff, prefix
  groups = [same(f"{p}wte.weight", "embed/embedding", (cfg.vocab_size, d)),
            same(f"{p}wpe.weight", "pos_embed/embedding", (cfg.max_len, d))]
  for i in range(cfg.n_layers):
    hf, ours = f"{p}h.{i}.", f"layer_{i}/"
    qkv = tuple(f"{ours}attn/{name}" for name in ("query", "key", "value"))
    groups += [
        *layer_norm(f"{hf}ln_1", f"{ours}attn_norm", d),
        stacked_columns(f"{hf}attn.c_attn.weight", tuple(q + "/kernel" for q in qkv), (d, 3 * d), (d, h, hd)),
        stacked_columns(f"{hf}attn.c_attn.bias", tuple(q + "/bias" for q in qkv), (3 * d,), (h, hd)),
        reshaped(f"{hf}attn.c_proj.weight", f"{ours}attn/out/kernel", (d, d), (h, hd, d)),
        same(f"{hf}attn.c_proj.bias", f"{ours}attn/out/bias", (d,)),
        *layer_norm(f"{hf}ln_2", f"{ours}mlp_norm", d),
        same(f"{hf}mlp.c_fc.weight", f"{ours}mlp/up/kernel", (d, f)),
        same(f"{hf}mlp.c_fc.bias", f"{ours}mlp/up/bias", (f,)),
        same(f"{hf}mlp.c_proj.weight", f"{ours}mlp/down/kernel", (f, d)),
        same(f"{hf}mlp.c_proj.bias", f"{ours}mlp/down/bias", (d,)),
    ]
  groups += layer_norm(f"{p}ln_f", "final_norm", d)
  return groups + output_groups(cfg, head)


def llama_layer(cfg: ModelConfig, i: int, prefix: str) -> list:
  d, h, kv, hd, f = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head, cfg.d_ff
  hf, ours = f"{prefix}layers.{i}.", f"layer_{i}/"
  groups = [same(f"{hf}input_layernorm.weight", f"{ours}attn_norm/scale", (d,)), *block_norms(cfg, hf, ours),
            linear(f"{hf}self_attn.o_proj.weight", f"{ours}attn/out/kernel", (d, h * hd), (h, hd, d))]
  for name, ours_name, heads in (("q_proj", "query", h), ("k_proj", "key", kv), ("v_proj", "value", kv)):
    groups.append(linear(f"{hf}self_attn.{name}.weight", f"{ours}attn/{ours_name}/kernel", (heads * hd, d),
                         (d, heads, hd)))
    if cfg.bias in ("qkv", "all"):
      groups.append(reshaped(f"{hf}self_attn.{name}.bias", f"{ours}attn/{ours_name}/bias", (heads * hd,),
                             (heads, hd)))
  for name, ours_name, shape in (("gate_proj", "gate", (f, d)), ("up_proj", "up", (f, d)),
                                 ("down_proj", "down", (d, f))):
    groups.append(linear(f"{hf}mlp.{name}.weight", f"{ours}mlp/{ours_name}/kernel", shape, shape[::-1]))
    if cfg.bias == "all":
      groups.append(same(f"{hf}mlp.{name}.bias", f"{ours}mlp/{ours_name}/bias", (shape[0],)))
  if cfg.bias == "all":
    groups.append(same(f"{hf}self_attn.o_proj.bias", f"{ours}attn/out/bias", (d,)))
  if cfg.qk_norm:  # Qwen3
    groups += [same(f"{hf}self_attn.q_norm.weight", f"{ours}attn/query_norm/scale", (hd,)),
               same(f"{hf}self_attn.k_norm.weight", f"{ours}attn/key_norm/scale", (hd,))]
  return groups


def block_norms(cfg: ModelConfig, hf: str, ours: str) -> list:
  """The norms after the input norm: Llama's post_attention_layernorm is the MLP's input norm;
  Gemma's is the attention output's, and its MLP has a norm before and one after."""
  d = (cfg.d_model,)
  if not cfg.post_norms:
    return [same(f"{hf}post_attention_layernorm.weight", f"{ours}mlp_norm/scale", d)]
  return [same(f"{hf}post_attention_layernorm.weight", f"{ours}post_attn_norm/scale", d),
          same(f"{hf}pre_feedforward_layernorm.weight", f"{ours}mlp_norm/scale", d),
          same(f"{hf}post_feedforward_layernorm.weight", f"{ours}post_mlp_norm/scale", d)]


def moe_layer(cfg: ModelConfig, i: int, prefix: str) -> list:
  """A Qwen3-MoE or Mixtral layer: a Llama layer whose MLP is the router and the experts, stacked
  as transformers 5 holds them (`hf_moe` reads and writes checkpoints' one tensor per expert)."""
  e, d, f = cfg.n_experts, cfg.d_model, cfg.expert_dim
  hf, ours = f"{prefix}layers.{i}.mlp.", f"layer_{i}/mlp/"
  swap = lambda w: w.transpose(0, 2, 1)  # HF's [expert, out, in], ours [expert, in, out]

  def join_gate_up(kernels):
    return array_module(kernels).concatenate([swap(k) for k in kernels], axis=1)

  experts = [Group(f"{hf}experts.gate_up_proj", (e, 2 * f, d), (f"{ours}gate", f"{ours}up"),
                   lambda w: [swap(w[:, :f]), swap(w[:, f:])], join_gate_up),
             Group(f"{hf}experts.down_proj", (e, d, f), (f"{ours}down",), lambda w: [swap(w)],
                   lambda kernels: swap(kernels[0])),
             linear(f"{hf}gate.weight", f"{ours}router", (e, d), (d, e))]
  return [g for g in llama_layer(cfg, i, prefix) if not g.hf.startswith(hf)] + experts


def llama_groups(cfg: ModelConfig, head: str, prefix: str) -> list:
  groups = [same(f"{prefix}embed_tokens.weight", "embed/embedding", (cfg.vocab_size, cfg.d_model))]
  for i in range(cfg.n_layers):
    groups += (moe_layer if cfg.n_experts else llama_layer)(cfg, i, prefix)
  groups.append(same(f"{prefix}norm.weight", "final_norm/scale", (cfg.d_model,)))
  return groups + output_groups(cfg, head)


def output_groups(cfg: ModelConfig, head: str, lm_head: str = "lm_head.weight") -> list:
  """The untied LM head, or the one-label score layer of a reward model (its bias is not a
  tensor of HF's: see rlhf_jax.interop.hf)."""
  if head == "reward":
    return [linear("score.weight", "reward_head/kernel", (1, cfg.d_model), (cfg.d_model, 1))]
  if cfg.tie_embeddings:
    return []
  return [linear(lm_head, "lm_head/kernel", (cfg.vocab_size, cfg.d_model), (cfg.d_model, cfg.vocab_size))]


BACKBONE_PREFIX = {"gpt2": "transformer.", "gpt_neox": "gpt_neox.", "llama": "model."}
GROUPS = {"gpt2": gpt2_groups, "gpt_neox": neox_groups, "llama": llama_groups}


def groups_for(family: str, cfg: ModelConfig, head: str, prefix: str) -> list:
  """Every group of a `family` ('gpt2', 'gpt_neox' or 'llama') model; `prefix` is the
  backbone's name in the checkpoint ('transformer.' / 'gpt_neox.' / 'model.', or '' for a bare
  GPT2Model / LlamaModel)."""
  return GROUPS[family](cfg, head, prefix)


def backbone_prefix(family: str, names) -> str:
  """The backbone's name in the checkpoint: the family's, or under a multimodal model's
  `language_model` (Gemma 3 4B+: the Hub's `language_model.model.`, transformers 5's
  `model.language_model.`), or '' for a bare backbone."""
  prefix = BACKBONE_PREFIX[family]
  for candidate in (f"{prefix}language_model.", f"language_model.{prefix}", prefix):
    if any(n.startswith(candidate) for n in names):
      return candidate
  return ""
