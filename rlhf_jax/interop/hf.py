"""Hugging Face checkpoints in and out: GPT-2, GPT-NeoX, Llama-family (Llama, Mistral, Qwen2, Qwen3) and Gemma 3 models.

  model, params = hf.load("/path/to/hf_dir")            # model.apply({"params": params}, tokens) -> logits
  tokenizer = hf.load_tokenizer("/path/to/hf_dir")      # our Tokenizer protocol
  hf.export(Transformer(model.cfg), params, tokenizer, "/path/to/out")

Only local directories are read (nothing is downloaded) and no code from them runs: see
hf_config (refusals), hf_tensors (safetensors, or .bin through torch.load(weights_only=True)).
Each tensor is read on the host, converted, and placed straight into its shard of the mesh
(`jax.make_array_from_callback`), so no device ever holds more than its part of a param.

A reward model (our reward head: a kernel and a bias) exports as *ForSequenceClassification
with num_labels=1; HF's score layer has no bias, so the bias goes into config.json under
"rlhf_jax" (HF ignores it: its score is ours minus that constant, which changes no preference
and no normalised reward) and an import reads it back. HF pools a sequence's score at the
last token that is not `pad_token_id`, ours at the last token of the mask: they agree except
when PAD is EOS (GPT-2), where HF reads the token before a trailing EOS.
"""

import dataclasses
import os

import flax
import jax
import numpy as np
from jax.sharding import Mesh

from rlhf_jax import sharding
from rlhf_jax.data import hf_tokenizer
from rlhf_jax.errors import UserError
from rlhf_jax.interop import hf_config, hf_moe, hf_tensors, hf_weights
from rlhf_jax.interop.hf_export import export
from rlhf_jax.models.config import ModelConfig
from rlhf_jax.models.transformer import Transformer, param_shapes

PREFIX = "hf:"  # init_from=hf:/path names a Hugging Face directory rather than a run
__all__ = ["CausalLM", "RewardModel", "HFSource", "PREFIX", "export", "load", "load_tokenizer", "model_config",
           "read_params", "source"]


class CausalLM(Transformer):
  """Our Transformer, returning the logits [batch, time, vocab] alone; same params.
  Train and sample with `Transformer(model.cfg)`."""

  def __call__(self, tokens, mask=None, **kwargs):
    return super().__call__(tokens, mask, **kwargs).logits


class RewardModel(Transformer):
  """A *ForSequenceClassification import: the reward head's score at every position [batch, time]."""

  def __call__(self, tokens, mask=None, **kwargs):
    return super().__call__(tokens, mask, with_logits=False, **kwargs).scalars["reward"]


def model_config(directory: str, **overrides) -> ModelConfig:
  """Our ModelConfig for the HF model in `directory`; `overrides` sets compute fields
  (dtype, param_dtype, remat, attention, dropout, heads)."""
  values = hf_config.model_values(hf_config.read_config(directory))
  try:
    return ModelConfig.from_dict({**values, **overrides})
  except (TypeError, ValueError) as e:
    raise UserError(str(e)) from None


def load(path: str, *, mesh: Mesh = None, rules=None, dtype: str = "float32", param_dtype: str = "float32",
         **overrides):
  """(model, params) of the HF model in directory `path`, params laid out on `mesh` (default:
  the first device) by the logical `rules` (default: the configs' DEFAULT_RULES). A causal LM's
  model returns logits, a one-label *ForSequenceClassification's the reward at every position."""
  if rules is None:
    from configs.common import DEFAULT_RULES  # pylint: disable=g-import-not-at-top  (the one rule table)
    rules = DEFAULT_RULES
  path = os.path.abspath(path)
  cfg = model_config(path, dtype=dtype, param_dtype=param_dtype, **overrides)
  head = hf_config.head_of(hf_config.read_config(path))
  model = (RewardModel if head == "reward" else CausalLM)(cfg)
  mesh = mesh or Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), sharding.MESH_AXES)
  target = sharding.abstract_placed(param_shapes(model), mesh, rules)
  params = read_params(path, cfg, target)
  missing = sorted(set(flax.traverse_util.flatten_dict(target, sep="/")) -
                   set(flax.traverse_util.flatten_dict(params, sep="/")))
  if missing:  # e.g. a head asked for in `overrides` that the checkpoint does not have
    raise UserError(f"{path} has no weights for {', '.join(missing)}")
  return model, params


def load_tokenizer(path: str) -> hf_tokenizer.HFTokenizer:
  return hf_tokenizer.HFTokenizer(path)


def checkpoint_groups(path: str, cfg: ModelConfig, checkpoint: hf_tensors.Checkpoint):
  """The groups of the model in `path`, after checking that they account for every tensor."""
  config = hf_config.read_config(path)
  family = hf_config.weights_family(config["model_type"])
  head = hf_config.head_of(config)
  prefix = hf_weights.backbone_prefix(family, checkpoint.names)
  groups = hf_weights.groups_for(family, cfg, head, prefix)
  if "lm_head.weight" in checkpoint.names:  # GPT-NeoX's embed_out under its transformers v5 name
    groups = [dataclasses.replace(g, hf="lm_head.weight") if g.hf == "embed_out.weight" else g for g in groups]
  known = {g.hf for g in groups} | ({"lm_head.weight"} if cfg.tie_embeddings else set())  # a tied copy
  unknown = [n for n in checkpoint.names if n not in known and not hf_weights.IGNORED.search(n)
             and not (config["model_type"] in hf_config.MULTIMODAL_TYPES and hf_weights.IMAGE_PARTS.search(n))]
  if unknown:
    raise UserError(f"{path}: tensor {unknown[0]} ({len(unknown)} in all) has no place in a {config['model_type']} "
                    "model as configured: this variant is not supported")
  return groups, config


def read_params(path: str, cfg: ModelConfig, target) -> dict:
  """Params for the entries of `target` (a tree of leaves with shape, dtype and sharding:
  ShapeDtypeStructs or placed arrays) that the checkpoint has, each placed on its sharding."""
  checkpoint = hf_moe.StackedExperts(hf_tensors.Checkpoint(path))  # experts stacked, as ours are
  groups, config = checkpoint_groups(path, cfg, checkpoint)
  wanted = flax.traverse_util.flatten_dict(target, sep="/")
  loaded = {}
  for group in groups:
    if not any(p in wanted for p in group.ours):
      continue
    array = checkpoint.get(group.hf)
    if tuple(array.shape) != group.hf_shape:
      raise UserError(f"{path}: {group.hf} has shape {tuple(array.shape)}, config.json implies {group.hf_shape}")
    for name, value in zip(group.ours, group.split(array)):
      if name in wanted:
        loaded[name] = place(value, wanted[name], name)
  bias = (config.get(hf_config.EXTRA_KEY) or {}).get("reward_head_bias")
  if "reward_head/bias" in wanted and "reward_head/kernel" in loaded:
    loaded["reward_head/bias"] = place(np.full((1,), bias or 0.0, np.float32), wanted["reward_head/bias"],
                                       "reward_head/bias")
  return flax.traverse_util.unflatten_dict(loaded, sep="/")


def place(host: np.ndarray, leaf, name: str) -> jax.Array:
  """`host` cast to the leaf's dtype and laid out by its sharding: each device gets only its
  own slice (the callback is asked for the indices of this process's devices)."""
  if tuple(host.shape) != tuple(leaf.shape):
    raise UserError(f"the checkpoint gives {name} shape {tuple(host.shape)}, the model wants {tuple(leaf.shape)}")
  host = host.astype(leaf.dtype, copy=False)
  try:
    return jax.make_array_from_callback(host.shape, leaf.sharding, lambda index: host[index])
  except ValueError as e:
    raise UserError(f"{name} {tuple(host.shape)} does not split evenly over the mesh as the sharding rules say "
                    f"({leaf.sharding.spec}): change the mesh or the rules") from e


@dataclasses.dataclass
class HFSource:
  """An `init_from=hf:DIR` source, seen by rlhf_jax/training/core/setup.py as a finished run:
  `file("tokenizer")` is the directory itself (its HF tokenizer files), `read_json("model.json")`
  the architecture from its config.json, and `read_params` its weights."""
  path: str
  finished: bool = True

  def __post_init__(self):
    self.path = os.path.abspath(self.path)
    self.values = hf_config.model_values(hf_config.read_config(self.path))  # refuses early
    if not hf_tokenizer.is_hf_tokenizer_dir(self.path):
      raise UserError(f"{self.path} has no tokenizer (tokenizer.json, tokenizer.model or vocab.json + merges.txt): "
                      "a stage started from a Hugging Face model uses its tokenizer")

  def file(self, *parts) -> str:
    return self.path if parts == ("tokenizer",) else os.path.join(self.path, *parts)

  def read_json(self, name: str) -> dict:
    if name != "model.json":
      raise UserError(f"{self.path} is a Hugging Face directory, not a run: it has no {name}")
    return dataclasses.asdict(ModelConfig.from_dict(self.values))

  def read_params(self, target) -> dict:
    cfg = ModelConfig.from_dict(self.values)
    return read_params(self.path, cfg, target)


def source(init_from: str):
  """The HFSource an `init_from` value names, or None for a run directory."""
  return HFSource(init_from[len(PREFIX):]) if init_from.startswith(PREFIX) else None
