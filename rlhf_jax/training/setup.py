"""Building a run's pieces: tokenizer, model, sharded state (shape-first), and its restore.

Shared by every stage, so pretraining, SFT and the RL stages start, resume and load
upstream weights the same way.
"""

import dataclasses
import os

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from rlhf_jax import sharding
from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.data import sources
from rlhf_jax.data.tokenizers import build_tokenizer, load_tokenizer
from rlhf_jax.errors import UserError
from rlhf_jax.interop import hf
from rlhf_jax.models.config import ModelConfig, padded_vocab
from rlhf_jax.models.transformer import Transformer, boxed_params, param_shapes
from rlhf_jax.training.state import TrainState
from rlhf_jax.workdir import RunDir

STATE_ITEMS = ("params", "opt_state")


def source_run(cfg):
  """The finished run that `init_from` names, or None. `hf:DIR` names a Hugging Face model
  directory instead, which the functions below read as a run (interop.hf.HFSource)."""
  if not cfg.init_from:
    return None
  source = hf.source(cfg.init_from) or RunDir(cfg.init_from)
  if not source.finished:
    raise UserError(f"init_from={cfg.init_from}: not a finished run (no summary.json there)")
  return source


def prepare_tokenizer(cfg, run_dir: RunDir, source):
  """The source run's tokenizer, this run's saved one (on resume), or a new one."""
  for directory in ([source.file("tokenizer")] if source else []) + [run_dir.file("tokenizer")]:
    if os.path.isdir(directory):
      tokenizer = load_tokenizer(directory)
      break
  else:
    texts = []
    if cfg.tokenizer.kind != "byte":
      texts = sources.load_documents(cfg.data, "train")[:cfg.tokenizer.train_docs]
    try:
      tokenizer = build_tokenizer(cfg.tokenizer.kind, texts, cfg.tokenizer.vocab_size)
    except ValueError as e:
      raise UserError(str(e)) from None
  return tokenizer


def model_config(cfg, tokenizer, source) -> ModelConfig:
  """Architecture from the source run if there is one (compute settings and heads from cfg)."""
  values = dict(cfg.model)
  if source:
    arch = source.read_json("model.json")
    for key in ("dtype", "remat", "dropout", "heads"):
      arch[key] = values[key]
    values = arch
  if not values["vocab_size"]:
    values["vocab_size"] = padded_vocab(tokenizer.vocab_size)
  try:
    model_cfg = ModelConfig.from_dict(values)
  except (TypeError, ValueError) as e:
    raise UserError(str(e)) from None
  if tokenizer.vocab_size > model_cfg.vocab_size:
    raise UserError(f"tokenizer vocabulary ({tokenizer.vocab_size}) is larger than model.vocab_size "
                    f"({model_cfg.vocab_size})")
  return model_cfg


def save_run_files(run_dir: RunDir, tokenizer, model_cfg: ModelConfig) -> None:
  """The tokenizer and resolved model config, which downstream stages start from."""
  if jax.process_index() == 0:
    tokenizer.save(run_dir.file("tokenizer"))
  run_dir.write_json("model.json", dataclasses.asdict(model_cfg))


def init_state(model: Transformer, tx, mesh, rules, seed: int):
  """Shape-first init: shapes -> shardings -> jitted init, so no array exists whole on one
  device before it is placed. Returns (state, state shardings)."""

  def init(rng):
    params = boxed_params(model, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  rng = jax.random.key(seed)
  shardings = sharding.logical_shardings(jax.eval_shape(init, rng), mesh, rules)
  state = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)
  return state, shardings


def resume(state, shardings, checkpointer: Checkpointer, items=STATE_ITEMS):
  """`state` with the latest checkpoint restored into it (step from its metadata), or None."""
  if checkpointer.latest_step() is None:
    return None
  abstract = {name: sharding.abstract(getattr(state, name), getattr(shardings, name)) for name in items}
  items, meta = checkpointer.restore(abstract)
  step = jax.device_put(jnp.int32(meta["step"]), shardings.step)
  logging.info("resumed from %s at step %d", checkpointer.directory, meta["step"])
  return state.replace(step=step, **items)


def load_source_params(source: RunDir, params, param_shardings, mesh, rules, rename=None):
  """`params` with every entry the source run's final checkpoint also has replaced by it.

  New entries (a reward or value head the source lacks) keep their fresh init. `rename`
  maps source top-level names to ours (the critic takes the reward model's `reward_head`
  as its `value_head`).
  """
  if isinstance(source, hf.HFSource):
    return merge_params(params, source.read_params(params), param_shardings)
  source_model = Transformer(ModelConfig.from_dict(source.read_json("model.json")))
  abstract = sharding.abstract_placed(param_shapes(source_model), mesh, rules)
  loaded, _ = Checkpointer(source.file("checkpoints"), STATE_ITEMS).restore({"params": abstract})
  logging.info("initialised from %s", source.path)
  renamed = {(rename or {}).get(k, k): v for k, v in loaded["params"].items()}
  return merge_params(params, renamed, param_shardings)


def merge_params(fresh, loaded, shardings):
  flat_loaded = flax.traverse_util.flatten_dict(loaded, sep="/")
  flat_fresh = flax.traverse_util.flatten_dict(fresh, sep="/")
  flat_shardings = flax.traverse_util.flatten_dict(shardings, sep="/")
  merged = {}
  for key, value in flat_fresh.items():
    if key in flat_loaded:
      if flat_loaded[key].shape != value.shape:
        raise UserError(f"init_from parameter {key} has shape {flat_loaded[key].shape}, "
                        f"the model wants {value.shape}")
      value = jax.device_put(flat_loaded[key].astype(value.dtype), flat_shardings[key])
    merged[key] = value
  return flax.traverse_util.unflatten_dict(merged, sep="/")
