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
from rlhf_jax.models import lora
from rlhf_jax.models.config import ModelConfig, padded_vocab
from rlhf_jax.models.transformer import Transformer, boxed_params, param_shapes
from rlhf_jax.training.core.state import TrainState, model_params
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
  """Architecture from the source run if there is one (compute settings, heads and LoRA from cfg)."""
  values = dict(cfg.model)
  if source:
    arch = source.read_json("model.json")
    for key in ("dtype", "remat", "dropout", "heads", "logits_chunk"):
      arch[key] = values[key]
    values = arch
  if not values["vocab_size"]:
    values["vocab_size"] = padded_vocab(tokenizer.vocab_size)
  values.update(lora_rank=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_targets=tuple(cfg.lora.targets))
  try:
    model_cfg = ModelConfig.from_dict(values)
  except (TypeError, ValueError) as e:
    raise UserError(str(e)) from None
  if tokenizer.vocab_size > model_cfg.vocab_size:
    raise UserError(f"tokenizer vocabulary ({tokenizer.vocab_size}) is larger than model.vocab_size "
                    f"({model_cfg.vocab_size})")
  if model_cfg.lora_rank and source is None:
    raise UserError(f"lora.rank={model_cfg.lora_rank} adapts the weights of the run it starts from: set init_from")
  return model_cfg


def frozen_model_config(run) -> ModelConfig:
  """A finished run's architecture, to hold frozen: its LoRA adapters are merged when loaded."""
  return ModelConfig.from_dict(run.read_json("model.json"), lora_rank=0)


def save_run_files(run_dir: RunDir, tokenizer, model_cfg: ModelConfig, base: str = "") -> None:
  """The tokenizer and resolved model config, which downstream stages start from; with LoRA,
  lora.json names the base run the adapters belong to (`base`)."""
  if jax.process_index() == 0:
    tokenizer.save(run_dir.file("tokenizer"))
  run_dir.write_json("model.json", dataclasses.asdict(model_cfg))
  if model_cfg.lora_rank:
    run_dir.write_json("lora.json", {"base": base, "rank": model_cfg.lora_rank, "alpha": model_cfg.lora_alpha,
                                     "targets": list(model_cfg.lora_targets)})


def lora_base(cfg, source, run_dir: RunDir) -> str:
  """The run (or hf:DIR) whose weights a LoRA run's adapters sit on ("" without LoRA): the source
  itself, whose adapters (if any) are merged into it, or with lora.continue_adapters the source's
  own base. A resumed run's adapters must sit on the base they were trained on."""
  if not cfg.lora.rank:
    return ""
  if cfg.lora.continue_adapters and is_lora_run(source):
    base = source.read_json("lora.json")["base"]
  else:
    base = f"{hf.PREFIX}{os.path.abspath(source.path)}" if isinstance(source, hf.HFSource) else source.path
  if os.path.exists(run_dir.file("lora.json")) and run_dir.read_json("lora.json")["base"] != base:
    raise UserError(f"{run_dir.path}: its adapters were trained on {run_dir.read_json('lora.json')['base']}, "
                    f"not on {base}: use a new workdir")
  return base


def is_lora_run(source) -> bool:
  return not isinstance(source, hf.HFSource) and source.read_json("model.json").get("lora_rank", 0) > 0


def init_state(model: Transformer, tx, mesh, rules, seed: int):
  """Shape-first init: shapes -> shardings -> jitted init, so no array exists whole on one
  device before it is placed. Returns (state, state shardings)."""

  def init(rng):
    params, frozen = boxed_params(model, rng), None
    if model.cfg.lora_rank:  # only the adapters and heads train, and only they get optimizer state
      params, frozen = lora.split(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), frozen=frozen)

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


def start_state(state, shardings, checkpointer: Checkpointer, source, mesh, rules, continue_adapters=False):
  """The latest checkpoint if there is one, else the source's weights. With LoRA the frozen
  base is never checkpointed: it is read from the source either way."""
  if source and (state.frozen is not None or checkpointer.latest_step() is None):
    state = from_source(state, shardings, source, mesh, rules, continue_adapters)
  restored = resume(state, shardings, checkpointer)
  return restored if restored is not None else state


def from_source(state, shardings, source, mesh, rules, continue_adapters=False):
  """`state` with the source's weights: all of them trainable, or with LoRA as the frozen base
  (a LoRA source's merged, or with `continue_adapters` its base with its adapters trainable)."""
  full = load_source_params(source, model_params(state), model_params(shardings), mesh, rules,
                            merged=not continue_adapters)
  if state.frozen is None:
    return state.replace(params=full)
  params, frozen = lora.split(full)
  return state.replace(params=params, frozen=frozen)


def load_source_params(source, params, param_shardings, mesh, rules, rename=None, merged: bool = True):
  """`params` with every entry the source run's final weights also have replaced by them.

  New entries (a reward or value head the source lacks, fresh LoRA adapters) keep their fresh
  init. `rename` maps source top-level names to ours (the critic takes the reward model's
  `reward_head` as its `value_head`). A LoRA source gives its merged weights, or with
  `merged=False` its base and adapters.
  """
  if isinstance(source, hf.HFSource):
    return merge_params(params, source.read_params(params), param_shardings)
  loaded = run_params(source, mesh, rules, merged)
  logging.info("initialised from %s", source.path)
  renamed = {(rename or {}).get(k, k): v for k, v in loaded.items()}
  return merge_params(params, renamed, param_shardings)


def run_params(source: RunDir, mesh, rules, merged: bool = True, item: str = "params"):
  """A finished run's final params (checkpoint `item`: an RL or DPO run's are its `policy`),
  placed by `rules` on `mesh`. A LoRA run's checkpoint holds its adapters and heads: its base
  is read from the run lora.json names (recursively), then the adapters are merged into it
  unless `merged` is False."""
  model_cfg = ModelConfig.from_dict(source.read_json("model.json"))
  shapes = param_shapes(Transformer(model_cfg))
  if not model_cfg.lora_rank:
    return restore_params(source, sharding.abstract_placed(shapes, mesh, rules), item)
  trainable_shapes, base_shapes = lora.split(shapes)
  base_abstract = sharding.abstract_placed(base_shapes, mesh, rules)
  base_path = source.read_json("lora.json")["base"]
  base_source = hf.source(base_path) or RunDir(base_path)
  if not base_source.finished:
    raise UserError(f"{source.path}: the base its adapters belong to, {base_path}, is not a finished run")
  if isinstance(base_source, hf.HFSource):
    base = base_source.read_params(base_abstract)
  else:
    base = run_params(base_source, mesh, rules)
  wanted, got = (flax.traverse_util.flatten_dict(t) for t in (base_abstract, base))
  missing = ["/".join(k) for k in wanted if k not in got]
  if missing:
    raise UserError(f"{source.path}: its base {base_path} lacks {', '.join(missing[:3])}")
  base = flax.traverse_util.unflatten_dict({k: got[k] for k in wanted})  # without the base's own heads
  params = lora.combine(base, restore_params(source, sharding.abstract_placed(trainable_shapes, mesh, rules), item))
  return lora.merge(params, model_cfg) if merged else params


def restore_params(source: RunDir, abstract, item: str = "params"):
  """The `item` of the source's final checkpoint, into `abstract`'s shapes and shardings."""
  items = STATE_ITEMS if item == "params" else (item,)  # as the run wrote them: orbax warns of any other
  # A starting point is read, never changed: its final step or a one-line error naming it.
  final = source.read_json("summary.json").get("step") if source.finished else None
  checkpointer = Checkpointer(source.file("checkpoints"), items, read_only=True)
  loaded, _ = checkpointer.restore({item: abstract}, step=final)
  return loaded[item]


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
