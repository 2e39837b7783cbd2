"""Our params -> a Hugging Face directory: safetensors, config.json and the tokenizer's files.

The inverse of rlhf_jax.interop.hf.load (the same `hf_weights` groups, run backwards), so
an export read back gives the very same arrays. What HF has no tensor for goes into
config.json under "rlhf_jax" (see the rlhf_jax.interop.hf docstring).
"""

import glob
import json
import os
import tempfile

from absl import logging
import flax
import jax
from jax.experimental import multihost_utils
import numpy as np

from rlhf_jax.data.hf_tokenizer import HFTokenizer
from rlhf_jax.data.tokenizers import SentencePieceTokenizer
from rlhf_jax.errors import UserError
from rlhf_jax.interop import hf_config, hf_moe, hf_tensors, hf_weights
from rlhf_jax.models.config import ModelConfig

DTYPES = ("float32", "bfloat16")
MAX_SHARD_BYTES = 5 * 2**30  # HF's own default shard size


def export(model, params, tokenizer, out: str, *, dtype: str = "float32", max_shard_bytes: int = MAX_SHARD_BYTES,
           extra: dict = None) -> str:
  """Writes `params` of `model` (a Transformer, or its ModelConfig) to the HF directory `out`.

  A model with a reward head exports as *ForSequenceClassification (its LM head, if any, is
  left out), any other as a causal LM (a value head is left out). `tokenizer` (ours) gives the
  special ids and the tokenizer files; `extra` is added to config.json's "rlhf_jax" entry.
  Returns the HF architecture name."""
  cfg = model if isinstance(model, ModelConfig) else model.cfg
  if dtype not in DTYPES:
    raise UserError(f"export dtype={dtype!r}: choose one of {DTYPES}")
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  head = "reward" if "reward_head/kernel" in flat else "lm"
  config = export_config(cfg, head, dtype, tokenizer, flat, extra)
  groups = export_groups(cfg, head, flat)
  os.makedirs(out, exist_ok=True)
  for stale in glob.glob(os.path.join(out, "model*.safetensors*")) + glob.glob(os.path.join(out, "pytorch_model*")):
    os.remove(stale)  # an earlier export's shards would shadow this one
  tensors = ((g.hf, g.join([host(flat[p]).astype(jax.numpy.dtype(dtype)) for p in g.ours])) for g in groups)
  tensors = hf_moe.per_expert(tensors, config["model_type"])  # one tensor per expert, as checkpoints hold them
  hf_tensors.write_safetensors(tensors, out, max_shard_bytes)
  write_configs(config, out, tokenizer.stop_ids)
  export_tokenizer(tokenizer, out, cfg.max_len)
  logging.info("exported %s to %s", config["architectures"][0], out)
  return config["architectures"][0]


def export_config_only(cfg: ModelConfig, tokenizer, out: str) -> None:
  """An LM's config.json and generation_config.json without weights: what an engine that takes
  its weights in memory (vLLM with placeholder weights) starts from."""
  os.makedirs(out, exist_ok=True)
  write_configs(export_config(cfg, "lm", "float32", tokenizer, {}, None), out, tokenizer.stop_ids)


def write_configs(config: dict, out: str, stop_ids: tuple = ()) -> None:
  """config.json, and a causal LM's generation_config.json (its special ids; its eos_token_id
  every stop id when there are several, as a chat checkpoint's lists them, so that transformers'
  `generate` and vLLM stop where our samplers do and the tokenizer loads them back)."""
  write_json(os.path.join(out, "config.json"), config)
  if not config["architectures"][0].endswith("ForSequenceClassification"):
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    if len(stop_ids) > 1:
      generation["eos_token_id"] = list(stop_ids)
    write_json(os.path.join(out, "generation_config.json"), generation)


def export_groups(cfg: ModelConfig, head: str, flat: dict) -> list:
  family = hf_config.weights_family(hf_config.family_of(cfg))
  groups = hf_weights.groups_for(family, cfg, head, hf_weights.BACKBONE_PREFIX[family])
  missing = [p for g in groups for p in g.ours if p not in flat]
  if missing:
    raise UserError(f"the params lack {missing[0]}, which a {family} export of this model needs")
  return groups


def export_config(cfg: ModelConfig, head: str, dtype: str, tokenizer, flat: dict, extra) -> dict:
  """config.json, with what HF has no field for under "rlhf_jax" (the reward head's bias)."""
  specials = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
  config = hf_config.hf_config(cfg, head, dtype, specials)
  extras = dict(extra or {})
  if head == "reward":
    extras["reward_head_bias"] = float(host(flat["reward_head/bias"])[0])
  if extras:
    config[hf_config.EXTRA_KEY] = extras
  return config


def host(x) -> np.ndarray:
  """A param as one host array (gathered from the other processes when it is split over them)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x))


def write_json(path: str, value: dict) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, sort_keys=True)
    f.write("\n")


def export_tokenizer(tokenizer, out: str, max_len: int) -> None:
  """The HF files of an HF tokenizer, or our SentencePiece model as tokenizer.model, plus a
  tokenizer_config.json naming the special tokens (when there is none already)."""
  if isinstance(tokenizer, HFTokenizer):
    tokenizer.copy_files(out)
    id_to_token, settings = tokenizer.id_to_token, {"tokenizer_class": "PreTrainedTokenizerFast"}
  elif isinstance(tokenizer, SentencePieceTokenizer):
    with tempfile.TemporaryDirectory() as tmp:
      tokenizer.save(tmp)
      os.replace(os.path.join(tmp, "tokenizer.model"), os.path.join(out, "tokenizer.model"))
    # Ours is trained without SentencePiece's dummy prefix; HF's LlamaTokenizer would add one
    # (then it encodes as we do: checked on 200 reviews and odd whitespace).
    id_to_token, settings = tokenizer.id_to_piece, {"tokenizer_class": "LlamaTokenizer", "add_prefix_space": False}
  else:
    logging.warning("the %s tokenizer has no Hugging Face form: %s gets no tokenizer files", tokenizer.name, out)
    return
  path = os.path.join(out, "tokenizer_config.json")
  if not os.path.isfile(path):
    names = {f"{n}_token": id_to_token(getattr(tokenizer, f"{n}_id")) for n in ("bos", "eos", "pad")}
    write_json(path, {**names, **settings, "model_max_length": max_len, "add_bos_token": False,
                      "add_eos_token": False})
