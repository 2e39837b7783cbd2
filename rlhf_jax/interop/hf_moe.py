"""Mixture-of-experts tensors: Hugging Face checkpoints' one tensor per expert <-> stacked experts.

Checkpoints (the Hub's, and what transformers 5's `save_pretrained` writes) hold one tensor per
expert and projection: Qwen3-MoE `mlp.experts.{e}.gate_proj.weight` (up_proj, down_proj) and the
router `mlp.gate.weight`; Mixtral `block_sparse_moe.experts.{e}.w1.weight` (w1 gate, w3 up, w2
down) and `block_sparse_moe.gate.weight`. transformers 5 holds the experts stacked in the module,
`mlp.experts.gate_up_proj` [E, 2I, D] and `mlp.experts.down_proj` [E, D, I], converting on load
(its conversion_mapping.py). `hf_weights` names the stacked tensors (our kernels are stacked too);
`StackedExperts` shows a checkpoint in either layout by those names, and `per_expert` writes them
back one per expert, as `save_pretrained` does, which `from_pretrained`, vLLM and the Hub read.
"""

import re

import numpy as np

from rlhf_jax.errors import UserError
from rlhf_jax.interop.hf_weights import array_module

PER_EXPERT = re.compile(r"^(.*)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj|w1|w3|w2)"
                        r"\.weight$")
MIXTRAL_PROJECTIONS = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}
STACKED = {"gate_up_proj": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)}  # stacked -> its projections


class StackedExperts:
  """A `hf_tensors.Checkpoint` seen with stacked experts: `names` and `get(name)`. Per-expert
  tensors appear as `LAYER.mlp.experts.gate_up_proj` (gate and up side by side on axis 1) and
  `LAYER.mlp.experts.down_proj`; Mixtral's `block_sparse_moe` is `mlp`. Other tensors pass through."""

  def __init__(self, checkpoint):
    self.checkpoint, self.directory = checkpoint, checkpoint.directory
    self._experts = {}  # stacked name -> projection -> expert -> checkpoint name
    self._others = {}  # our name -> checkpoint name
    for name in checkpoint.names:
      match = PER_EXPERT.match(name)
      if not match:
        self._others[name.replace(".block_sparse_moe.", ".mlp.")] = name
        continue
      layer, expert, projection = match.groups()
      projection = {v: k for k, v in MIXTRAL_PROJECTIONS.items()}.get(projection, projection)
      stacked = f"{layer}.mlp.experts.{'down_proj' if projection == 'down_proj' else 'gate_up_proj'}"
      self._experts.setdefault(stacked, {}).setdefault(projection, {})[int(expert)] = name

  @property
  def names(self) -> list:
    return sorted([*self._others, *self._experts])

  def get(self, name: str) -> np.ndarray:
    if name not in self._experts:
      return self.checkpoint.get(self._others.get(name, name))
    found = self._experts[name]
    stacks = []
    for projection in STACKED[name.rsplit(".", 1)[1]]:
      if projection not in found:
        raise UserError(f"{self.directory}: {name} has no per-expert {projection} tensors")
      stacks.append(np.stack([self.checkpoint.get(n) for _, n in sorted(found[projection].items())]))
    return np.concatenate(stacks, axis=1)


def per_expert(tensors, model_type: str):
  """(name, array) pairs with the stacked experts split one tensor per expert and projection, in
  `model_type`'s checkpoint names (Mixtral's router is `block_sparse_moe.gate.weight`)."""
  mixtral = model_type == "mixtral"
  for name, array in tensors:
    xp = array_module([array])  # a weight push's device arrays stay on their devices
    layer, _, tensor = name.rpartition(".mlp.experts.")
    if tensor not in STACKED:
      yield (name.replace(".mlp.gate.weight", ".block_sparse_moe.gate.weight") if mixtral else name), array
      continue
    projections = STACKED[tensor]
    for projection, part in zip(projections, xp.split(array, len(projections), axis=1)):
      for expert, weight in enumerate(part):
        if mixtral:
          yield f"{layer}.block_sparse_moe.experts.{expert}.{MIXTRAL_PROJECTIONS[projection]}.weight", weight
        else:
          yield f"{layer}.mlp.experts.{expert}.{projection}.weight", weight
