"""A LoRA policy's adapters pushed to vLLM as adapters (`rollout.vllm.lora_adapters=True`),
instead of merged into full weights: after the base's one full push, each update sends the
adapters alone (at rank 8 on a 7B policy, megabytes instead of its 14 GB).

vLLM 0.32 takes an adapter from a directory only (`LoRARequest(lora_path=...)`), so a push
writes the adapters in PEFT's layout (adapter_config.json, adapter_model.safetensors) to a
scratch directory in memory (/dev/shm where there is one), the engine loads them at once under
a new id (`add_lora`; vLLM's prefix cache keys on the id, so nothing computed under the old
adapter is reused) and drops the old one, and the directory is removed.

Ours: A [in..., r] and B [r, out...] beside the kernel they adapt, W' = W + (alpha / r) A B
(models/lora.py). PEFT's: lora_A.weight [r, in] and lora_B.weight [out, r] on the Hugging Face
module whose weight [out, in] is the kernel's export, scaled by lora_alpha / r. The two agree
where a kernel's export is its plain transpose (an nn.Linear: Llama, Qwen, Gemma, Mistral);
GPT-2's fused Conv1D and GPT-NeoX's interleaved q, k and v are not, and are refused in one line.
"""

import json
import math
import os
import tempfile
import time

import flax
import numpy as np

from rlhf_jax.errors import UserError
from rlhf_jax.interop import hf_config, hf_export
from rlhf_jax.models import lora
from rlhf_jax.models.config import ModelConfig

SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None  # adapters pass through memory, not a disk


def base_params(params):
  """The policy's params without its adapters: the base the engine holds (pushed once)."""
  return lora.split(params)[1]


def adapter_tensors(params, model_cfg: ModelConfig) -> dict:
  """{PEFT tensor name: host array} of the policy's adapters."""
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  groups = {g.ours[0]: g for g in hf_export.export_groups(model_cfg, "lm", flat) if len(g.ours) == 1}
  tensors = {}
  for path in sorted(p for p in flat if p.endswith("/lora_a")):
    owner = path.removesuffix("lora_a")
    a, b = hf_export.host(flat[path]), hf_export.host(flat[owner + "lora_b"])
    group = groups.get(owner + "kernel")
    if group is None or not plain_linear(group, a.shape[:-1], b.shape[1:]):
      raise UserError(f"rollout.vllm.lora_adapters: {owner}kernel has no plain linear layer in a "
                      f"{hf_config.family_of(model_cfg)} checkpoint for vLLM's adapters to sit on (fused or "
                      "interleaved projections): set rollout.vllm.lora_adapters=False to push merged weights")
    module, rank = group.hf.removesuffix(".weight"), a.shape[-1]
    tensors[f"base_model.model.{module}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, rank).T)
    tensors[f"base_model.model.{module}.lora_B.weight"] = np.ascontiguousarray(b.reshape(rank, -1).T)
  return tensors


def plain_linear(group, in_shape: tuple, out_shape: tuple) -> bool:
  """Whether `group` exports a kernel [in..., out...] as its plain transpose [out, in]."""
  n_in, n_out = math.prod(in_shape), math.prod(out_shape)
  probe = np.arange(n_in * n_out, dtype=np.float32).reshape(*in_shape, *out_shape)
  joined = np.asarray(group.join([probe]))
  return joined.shape == (n_out, n_in) and np.array_equal(joined, probe.reshape(n_in, n_out).T)


def write_adapter(directory: str, tensors: dict, model_cfg: ModelConfig) -> None:
  """PEFT's two files of `tensors` (adapter_tensors') in `directory`."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  modules = sorted({name.split(".")[-3] for name in tensors})  # ...q_proj.lora_A.weight -> q_proj
  config = dict(peft_type="LORA", task_type="CAUSAL_LM", r=model_cfg.lora_rank, lora_alpha=model_cfg.lora_alpha,
                target_modules=modules, lora_dropout=0.0, bias="none", use_rslora=False)
  save_file(tensors, os.path.join(directory, "adapter_model.safetensors"))
  with open(os.path.join(directory, "adapter_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f)


def pushed_adapters(load_adapter, params, model_cfg: ModelConfig) -> dict:
  """Writes the policy's adapters to a scratch directory and has `load_adapter` (an engine's,
  here or in its own process) load them from it before it is removed; the push's metrics."""
  started = time.perf_counter()
  tensors = adapter_tensors(params, model_cfg)
  with tempfile.TemporaryDirectory(prefix="rlhf_jax_adapter_", dir=SCRATCH) as directory:
    write_adapter(directory, tensors, model_cfg)
    load_adapter(directory)
  size = sum(x.nbytes for x in tensors.values())
  return {"time/weight_push": time.perf_counter() - started, "rollout/weight_push_mb": size / 2**20}
