"""Tiny random Hugging Face models and tokenizers, built on the CPU from configs (no download)."""

import json
import os

import numpy as np

from rlhf_jax.data.corpus import generate_reviews

VOCAB = 300
EOS = "<|endoftext|>"


def bpe_tokenizer(directory: str, specials=(), **config) -> int:
  """A GPT-2-style byte-level BPE (EOS = BOS = <|endoftext|>, no PAD; `specials`, e.g. chat
  markers, as more special tokens) of VOCAB pieces trained on the embedded reviews, saved as HF
  saves one with `config` in its tokenizer_config.json; returns its vocabulary size."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOS, *specials], show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(generate_reviews(300), trainer)
  os.makedirs(directory, exist_ok=True)
  tokenizer.save(os.path.join(directory, "tokenizer.json"))
  write_json(os.path.join(directory, "tokenizer_config.json"),
             {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS, "tokenizer_class": "GPT2Tokenizer", **config})
  return tokenizer.get_vocab_size()


def write_json(path: str, value: dict) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f)


MOE = {"qwen3_moe": dict(moe_intermediate_size=32, norm_topk_prob=False, output_router_logits=True),
       "mixtral": dict(intermediate_size=32)}


def hf_config(kind: str, vocab: int = VOCAB, **overrides):
  import transformers  # pylint: disable=g-import-not-at-top
  if kind == "gpt2":
    values = dict(vocab_size=vocab, n_positions=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2Config(**{**values, **overrides})
  if kind == "gpt_neox":  # our `tiny` preset's block: GPT-2's with rotary positions
    rope = {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 1.0}
    values = dict(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                  max_position_embeddings=128, hidden_act="gelu_new", use_parallel_residual=False, bos_token_id=0,
                  eos_token_id=0, rope_parameters=rope)
    return transformers.GPTNeoXConfig(**{**values, **overrides})
  if kind == "gemma3":  # a window of 4 and sliding layers around a global one with scaled rope
    values = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=24, sliding_window=4,
                  layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                  max_position_embeddings=128, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                  rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                                   "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    return transformers.Gemma3TextConfig(**{**values, **overrides})
  llama = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=0)
  if kind in MOE:  # 8 experts of hidden size 32, top 2; Qwen3-MoE's gates not renormalised (its default)
    llama.update(MOE[kind], num_experts_per_tok=2, num_local_experts=8)
  config_class = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
                  "qwen3": transformers.Qwen3Config, "qwen3_moe": transformers.Qwen3MoeConfig,
                  "mixtral": transformers.MixtralConfig}[kind]
  return config_class(**{**llama, "rope_theta": 500.0 if kind == "llama" else 10000.0, **overrides})


def hf_model(kind: str, head: str = "lm", seed: int = 0, **overrides):
  """A random model in eval mode; every weight is perturbed so that biases are non-zero and
  norm scales are not all one (a swapped or dropped tensor then shows in the logits)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  name = {"gpt2": "GPT2", "gpt_neox": "GPTNeoX", "llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3",
          "gemma3": "Gemma3", "qwen3_moe": "Qwen3Moe", "mixtral": "Mixtral"}[kind]
  suffix = "ForSequenceClassification" if head == "reward" else ("LMHeadModel" if kind == "gpt2" else "ForCausalLM")
  name += "Text" if kind == "gemma3" and head == "reward" else ""
  config = hf_config(kind, **overrides)
  if head == "reward":
    config.num_labels = 1
  model = getattr(transformers, name + suffix)(config).eval()
  with torch.no_grad():
    for param in model.parameters():
      param.add_(0.05 * torch.randn_like(param))
  return model


def gemma3_multimodal(seed: int = 0):
  """Gemma 3 4B+'s layout: Gemma3ForConditionalGeneration, the `gemma3` text model beside a tiny
  vision tower, perturbed as `hf_model`'s."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                patch_size=14)
  config = transformers.Gemma3Config(text_config=hf_config("gemma3").to_dict(), vision_config=vision,
                                     mm_tokens_per_image=4, boi_token_index=VOCAB - 3, eoi_token_index=VOCAB - 2,
                                     image_token_index=VOCAB - 1)
  model = transformers.Gemma3ForConditionalGeneration(config).eval()
  with torch.no_grad():
    for param in model.parameters():
      param.add_(0.05 * torch.randn_like(param))
  return model


def positions(mask: np.ndarray) -> np.ndarray:
  """HF generate's position_ids for a left-padded batch: cumsum(mask) - 1 (pads: 0)."""
  return np.maximum(np.cumsum(mask, axis=-1) - 1, 0)


def hf_logits(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                position_ids=torch.tensor(positions(mask)))
  return out.logits.float().numpy()


def left_padded_batch(seed: int = 0, rows: int = 3, length: int = 12, low: int = 1):
  """Random tokens (never the specials' id 0 below `low`) with rows 1.. left-padded by 3, 6, ..."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(low, VOCAB, (rows, length)).astype(np.int32)
  mask = np.ones_like(tokens)
  for row in range(1, rows):
    mask[row, :3 * row] = 0
    tokens[row, :3 * row] = 0
  return tokens, mask
