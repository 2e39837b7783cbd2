"""Memory planner: bytes per device of a stage on a mesh, known before anything is compiled.

  python -m rlhf_jax.memory --config=configs/ppo.py:gpt2_small --devices=8 --config.mesh.fsdp=8

Params, gradients and optimizer state are exact shard sizes: the shapes of the real init and
`tx.init` (`jax.eval_shape`, no arrays), laid out by the config's logical rules on the mesh
sizes alone, so an 8-device plan needs no devices. Other models (the RL stages' critic,
reference and reward model) are assumed to have the policy's architecture (the reward model
starts from SFT). The KV cache is the largest batch the stage samples; activations are an
estimate (Korthikanti et al. 2022, below). The total is the sum of the rows: an upper bound,
as sampling and the training step need not peak at once.
"""

import dataclasses
import functools
import math
import sys
from typing import NamedTuple

from absl import app
from absl import flags
from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec
from ml_collections import config_flags

from rlhf_jax import rl_plan, sharding, stage_names
from rlhf_jax.errors import UserError
from rlhf_jax.models import lora
from rlhf_jax.models.config import ModelConfig, padded_vocab
from rlhf_jax.models.continuous import batching_of, sampler_cache
from rlhf_jax.models.transformer import Transformer, param_shapes
from rlhf_jax.stage_specs import STAGES
from rlhf_jax.training import make_optimizer

GiB = 2**30


class Row(NamedTuple):
  name: str
  bytes: int
  parts: str  # what the row is made of, for the printout


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  stage: str
  mesh: dict  # mesh axis -> size
  rows: tuple  # of Row, without the total

  @property
  def total(self) -> int:
    return sum(r.bytes for r in self.rows)

  def __getitem__(self, name: str) -> int:
    return self.total if name == "total" else {r.name: r.bytes for r in self.rows}[name]

  def table(self) -> str:
    mesh = " ".join(f"{a}={s}" for a, s in self.mesh.items())
    lines = [f"memory plan of stage {self.stage} on mesh {mesh}, per device:"]
    lines += [f"  {r.name:<16} {human(r.bytes):>9}  {r.parts}" for r in (*self.rows, Row("total", self.total, ""))]
    return "\n".join(line.rstrip() for line in lines)


def human(n: float) -> str:
  """Bytes as '93.1 GiB' / '512 MiB' (3 significant digits)."""
  for unit, size in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= size:
      return f"{n / size:.3g} {unit}"
  return f"{int(n)} B"


def mesh_size(mesh_axes, mesh_shape: dict) -> int:
  """Devices one array dimension is split over: None, a mesh axis or a tuple of them."""
  axes = () if mesh_axes is None else (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes
  return math.prod(mesh_shape[a] for a in axes)


def shard_bytes(shape, dtype, mesh_spec, mesh_shape: dict) -> int:
  """One device's shard of an array: every dimension divided by its devices (rounded up, though JAX
  only places even splits: the vocabulary is padded for that)."""
  spec = tuple(mesh_spec or ()) + (None,) * (len(shape) - len(mesh_spec or ()))
  return math.prod(-(-d // mesh_size(a, mesh_shape)) for d, a in zip(shape, spec)) * jnp.dtype(dtype).itemsize


def logical_size(name: str, rules, mesh_shape: dict) -> int:
  return mesh_size(nn.logical_to_mesh_axes((name,), rules)[0], mesh_shape)


def tree_bytes(boxed, rules, mesh_shape: dict) -> int:
  """Per-device bytes of a tree of (possibly) Partitioned boxes; unnamed leaves are replicated."""
  specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), rules)
  sizes = jax.tree.map(lambda s, x: shard_bytes(x.shape, x.dtype, s, mesh_shape), specs, nn.meta.unbox(boxed),
                       is_leaf=lambda s: isinstance(s, PartitionSpec))
  return sum(jax.tree.leaves(sizes))


@functools.lru_cache(maxsize=16)
def abstract_params(model_cfg: ModelConfig):
  return param_shapes(Transformer(model_cfg))


def train_batch(cfg, rl: rl_plan.RLPlan | None):
  """(rows per micro-step, sequence length, gradient accumulation steps) of the training step."""
  if rl is not None:
    accum, minibatches = rl.fields["accum_steps"], rl.fields["minibatches"]
    return cfg.data.batch_size // minibatches // accum, cfg.max_prompt_len + cfg.sample.max_new_tokens, accum
  pairs = 2 if STAGES[cfg.stage].pairs else 1  # chosen and rejected in one forward pass
  return pairs * cfg.data.batch_size // cfg.optim.accum_steps, cfg.data.seq_len, cfg.optim.accum_steps


def kv_cache_bytes(model_cfg: ModelConfig, rows: int, length: int, rules, mesh_shape: dict) -> int:
  """Keys and values of every layer, [rows, kv_heads, length, head_dim] in the compute dtype,
  split as the logical names say (rows over the batch axes, kv heads over tensor)."""
  spec = nn.logical_to_mesh_axes(("batch", "kv_heads", "length", "head_dim"), rules)
  shape = (rows, model_cfg.kv_heads, length, model_cfg.dim_per_head)
  return 2 * model_cfg.n_layers * shard_bytes(shape, model_cfg.dtype, spec, mesh_shape)


def activation_bytes(model_cfg: ModelConfig, b: int, s: int, rules, mesh_shape: dict, logits: bool) -> int:
  """ESTIMATE of one micro-step's saved activations, from Korthikanti et al. 2022 ("Reducing
  Activation Recomputation in Large Transformer Models"): per layer s*b*h*(10 + 24/t + 5*a*s/(h*t))
  bytes at 16 bits with t-way tensor parallelism (34 + 5as/h at t = 1), scaled to the compute
  dtype; with remat only each layer's input (2sbh) plus one layer's full set. Plus the f32 logits
  and their gradient (2 * b*s*V*4, V split over the vocab axis) of `logits_chunk` positions at a
  time (models/head.py: the losses never hold all s). b: rows per device."""
  h, a, t = model_cfg.d_model, model_cfg.n_heads, logical_size("heads", rules, mesh_shape)
  layer = s * b * h * (10 + 24 / t + 5 * a * s / (h * t))
  layers = model_cfg.n_layers * 2 * s * b * h + layer if model_cfg.remat else model_cfg.n_layers * layer
  scaled = layers * jnp.dtype(model_cfg.dtype).itemsize / 2
  vocab = -(-model_cfg.vocab_size // logical_size("vocab", rules, mesh_shape))
  positions = min(model_cfg.logits_chunk or s, s)
  return int(scaled + (2 * b * positions * vocab * 4 if logits else 0))


def trained_params(model_cfg: ModelConfig):
  """What trains of a model: all of its params, or with LoRA its adapters and heads."""
  shapes = abstract_params(model_cfg)
  return lora.split(shapes)[0] if model_cfg.lora_rank else shapes


def state_bytes(cfg, trainable: dict, size) -> tuple[int, int]:
  """(params, optimizer state) of what trains: the real `tx.init`'s shapes, which keep the
  params' logical names. (The shared critic's one multi_transform optimizer differs by a counter.)"""
  params = sum(size(trained_params(m)) for m, _ in trainable.values())
  tx_init = lambda optim_cfg: make_optimizer(optim_cfg, cfg.train.num_steps).init
  return params, sum(size(jax.eval_shape(tx_init(o), trained_params(m))) for m, o in trainable.values())


def frozen_bytes(model_cfg: ModelConfig, trainable: dict, frozen: dict, size) -> tuple[int, str]:
  """(bytes, what) of the frozen params. With LoRA the first trainable model's base is frozen
  too, and it is the reference (RL, DPO); a LoRA critic sits on the reference or the reward model."""
  if not model_cfg.lora_rank:
    return sum(size(abstract_params(m)) for m in frozen.values()), " + ".join(frozen) or "none"
  role, (m, _) = next(iter(trainable.items()))
  others = {k: v for k, v in frozen.items() if k != "reference"}
  name = f"{role} base" + (" = reference" if "reference" in frozen else "")
  merged = lambda f: abstract_params(dataclasses.replace(f, lora_rank=0))  # frozen models load merged
  return (size(lora.split(abstract_params(m))[1]) + sum(size(merged(f)) for f in others.values()),
          " + ".join([name, *others]))


def plan(cfg, model_cfg: ModelConfig, mesh_shape: dict, rl: rl_plan.RLPlan | None = None) -> MemoryPlan:
  """The stage's bytes per device on a mesh of these sizes ("data", "fsdp", "tensor"); `rl` the
  RL stage's resolved plan (resolved here if not given)."""
  stage = STAGES[cfg.stage]
  rl = stage.plan(cfg) if rl is None else rl
  rules, (trainable, frozen) = sharding.rules_of(cfg), stage.models(cfg, model_cfg, rl)
  size = lambda tree: tree_bytes(tree, rules, mesh_shape)
  seeds = cfg.get("vmap_seeds", 1)  # the RL stage's vmapped seeds: per-seed state, rollouts and updates
  params, opt = (seeds * n for n in state_bytes(cfg, trainable, size))
  rows, seq, accum = train_batch(cfg, rl)
  b = -(-rows // logical_size("batch", rules, mesh_shape))
  acts = seeds * sum(activation_bytes(m, b, seq, rules, mesh_shape, logits=role in ("model", "policy"))
                     for role, (m, _) in trainable.items())
  sampled, length = stage.sampled(cfg, model_cfg, rl)
  cache_rows, cache_length, cache_what = sampler_cache(sampled, length, **batching_of(cfg.get("sample")))
  names = " + ".join(trainable) + (f" LoRA r={model_cfg.lora_rank} adapters + heads" if model_cfg.lora_rank else "")
  names += f" (x{seeds} seeds)" if seeds > 1 else ""
  frozen_total, frozen_names = frozen_bytes(model_cfg, trainable, frozen, size)
  return MemoryPlan(cfg.stage, dict(mesh_shape), (
      Row("params", params, names + experts_note(model_cfg)),
      Row("optimizer state", opt, f"{names}: adam moments + counters"),
      Row("gradients", params * (2 if accum > 1 else 1), names + (" + accumulator" if accum > 1 else "")),
      Row("frozen models", frozen_total, frozen_names),
      Row("KV cache", seeds * kv_cache_bytes(model_cfg, cache_rows, cache_length, rules, mesh_shape),
          cache_what + (f" (x{seeds} seeds)" if seeds > 1 else "")),
      Row("activations", acts, f"estimate: {b} rows/device x {seq} tokens" + (", remat" if model_cfg.remat else "")
          + (f", logits {model_cfg.logits_chunk} positions at a time" if 0 < model_cfg.logits_chunk < seq else ""))))


def experts_note(model_cfg: ModelConfig) -> str:
  """An MoE model's parameters in all (what the rows hold: every expert) and those a token uses."""
  if not model_cfg.n_experts:
    return ""
  return f" (MoE: {model_cfg.num_params() / 1e6:.3g}M params, {model_cfg.active_params() / 1e6:.3g}M active)"


def device_bytes(cfg) -> int | None:
  """`memory.device_gb` if set, else what the device reports (GPU/TPU), else None (CPU)."""
  gb = cfg.get("memory", {}).get("device_gb", 0.0)
  if gb > 0:
    return int(gb * GiB)
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("bytes_limit")


def verdict(memory_plan: MemoryPlan, capacity: int | None) -> str | None:
  """None if the plan fits (or the capacity is unknown), else the one-line reason."""
  if capacity is None or memory_plan.total <= capacity:
    return None
  return (f"the plan needs {human(memory_plan.total)} per device but the device has {human(capacity)}: "
          "shard more (mesh.fsdp / mesh.tensor), set model.remat=True or lower the batch")


def check_divisible(model_cfg: ModelConfig, rules, mesh_shape: dict) -> None:
  """JAX places only even splits: name the first param dimension the mesh does not divide."""
  boxed = abstract_params(model_cfg)
  specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), rules)
  flat_specs = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  for (path, spec), leaf in zip(flat_specs, jax.tree.leaves(nn.meta.unbox(boxed))):
    for dim, axes in zip(leaf.shape, spec):
      if dim % mesh_size(axes, mesh_shape):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        raise UserError(f"parameter {name} {tuple(leaf.shape)}: its size {dim} does not split over mesh axes "
                        f"{axes} of {mesh_size(axes, mesh_shape)} devices; change config.mesh")


def check(cfg, model_cfg: ModelConfig, mesh, rl: rl_plan.RLPlan | None = None) -> MemoryPlan:
  """Logs the plan on `mesh` (a jax Mesh); raises UserError if a parameter does not split
  evenly over it or the plan exceeds the device's memory."""
  check_divisible(model_cfg, sharding.rules_of(cfg), dict(mesh.shape))
  memory_plan = plan(cfg, model_cfg, dict(mesh.shape), rl)
  logging.info("%s", memory_plan.table())
  problem = verdict(memory_plan, device_bytes(cfg))
  if problem:
    raise UserError(problem)
  return memory_plan


def print_plans(cfg, devices: int) -> None:
  """Each stage's plan (a pipeline's, in order) on `devices` devices, and whether it fits `memory.device_gb`."""
  for stage_cfg in [cfg[name] for name in cfg.stages] if cfg.stage == "pipeline" else [cfg]:
    mesh = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(stage_cfg.mesh, devices)))
    vocab = stage_cfg.model.vocab_size or padded_vocab(stage_cfg.tokenizer.vocab_size)
    lora_fields = dict(lora_rank=stage_cfg.lora.rank, lora_alpha=stage_cfg.lora.alpha,
                       lora_targets=tuple(stage_cfg.lora.targets))
    memory_plan = plan(stage_cfg, ModelConfig.from_dict(stage_cfg.model, vocab_size=vocab, **lora_fields), mesh)
    print(memory_plan.table())
    gb = stage_cfg.memory.device_gb
    if gb > 0:
      print("  " + (verdict(memory_plan, int(gb * GiB)) or f"fits in {human(gb * GiB)}"))


def define_flags() -> None:
  """Flags of the command (defined only when run as one, so importing this module defines none)."""
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/rl.py:gpt2_small.", lock_config=True)
  flags.DEFINE_integer("devices", 8, "devices of the mesh the plan is for")
  flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  try:
    stage_names.normalise(flags.FLAGS.config)
    print_plans(flags.FLAGS.config, flags.FLAGS.devices)
  except UserError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
