"""Reading and writing the tensors of a local Hugging Face checkpoint, one tensor at a time.

Read: `model.safetensors`, sharded safetensors (`model.safetensors.index.json`), or, only
where there are none, `pytorch_model.bin` (sharded or not) through
`torch.load(weights_only=True)`, which unpickles tensors and plain containers only, never
code. torch is optional: it is needed for .bin files alone. bf16 tensors come back as numpy
arrays of ml_dtypes' bfloat16 (which JAX imports, and safetensors' numpy reader then knows).
Written: safetensors, in shards of at most `max_shard_bytes` with HF's index file.
"""

import json
import os

import ml_dtypes  # registers bfloat16 with numpy, so safetensors' numpy reader can return it
import numpy as np

from rlhf_jax.errors import UserError

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


def shard_files(directory: str, single: str, index: str):
  """The files of a checkpoint in this format ([] if absent) and the tensor -> file map (or None)."""
  index_path = os.path.join(directory, index)
  if os.path.isfile(index_path):
    with open(index_path, encoding="utf-8") as f:
      weight_map = json.load(f)["weight_map"]
    return sorted(set(weight_map.values())), weight_map
  return ([single] if os.path.isfile(os.path.join(directory, single)) else []), None


class Checkpoint:
  """The tensors of one HF model directory: `names` and `get(name)` (a host numpy array)."""

  def __init__(self, directory: str):
    self.directory = directory
    files, _ = shard_files(directory, SAFETENSORS, SAFETENSORS_INDEX)
    if files:
      self._handles = [safetensors_file(os.path.join(directory, f)) for f in files]
      self._where = {name: h for h in self._handles for name in h.keys()}
      self._read = lambda name: self._where[name].get_tensor(name)
      return
    files, _ = shard_files(directory, BIN, BIN_INDEX)
    if not files:
      raise UserError(f"{directory} has no weights: expected {SAFETENSORS}, {SAFETENSORS_INDEX}, {BIN} "
                      f"or {BIN_INDEX}")
    states = [torch_state_dict(os.path.join(directory, f)) for f in files]
    self._where = {name: state for state in states for name in state}
    self._read = lambda name: torch_to_numpy(self._where[name][name])

  @property
  def names(self) -> list:
    return sorted(self._where)

  def get(self, name: str) -> np.ndarray:
    if name not in self._where:
      raise UserError(f"{self.directory}: the checkpoint lacks tensor {name}")
    return np.asarray(self._read(name))


def safetensors_file(path: str):
  try:
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("reading safetensors needs the safetensors package: pip install -e '.[hf]'") from None
  return safe_open(path, framework="numpy")


def torch_state_dict(path: str) -> dict:
  """A .bin state dict, memory-mapped; weights_only=True refuses anything but tensors and
  plain containers, so a malicious pickle cannot run code."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError(f"{path} is a PyTorch pickle: reading it needs torch (pip install torch, the CPU build "
                    "is enough), or convert the checkpoint to safetensors") from None
  try:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
  except Exception as e:  # pylint: disable=broad-except  (torch raises many kinds)
    raise UserError(f"cannot load {path} with torch.load(weights_only=True): {str(e).splitlines()[0]}") from None


def torch_to_numpy(tensor) -> np.ndarray:
  """Exact: numpy has no bfloat16, so bf16 is viewed as int16 and back as ml_dtypes' bfloat16."""
  import torch  # pylint: disable=g-import-not-at-top
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


def write_safetensors(tensors, directory: str, max_shard_bytes: int) -> list:
  """Writes (name, array) pairs in order, starting a new shard when the next tensor would take
  the current one past `max_shard_bytes`, so at most one shard is held in memory. Returns the
  file names written."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  shards, current, size, weight_map, total = [], {}, 0, {}, 0

  def flush():
    if current:
      name = f"part-{len(shards):05d}.tmp"
      save_file(current, os.path.join(directory, name), metadata={"format": "pt"})
      shards.append((name, list(current)))

  for name, array in tensors:
    array = np.ascontiguousarray(array)
    if current and size + array.nbytes > max_shard_bytes:
      flush()
      current, size = {}, 0
    current[name], size, total = array, size + array.nbytes, total + array.nbytes
  flush()
  if len(shards) == 1:
    os.replace(os.path.join(directory, shards[0][0]), os.path.join(directory, SAFETENSORS))
    return [SAFETENSORS]
  files = []
  for i, (tmp, names) in enumerate(shards):
    files.append(f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors")
    os.replace(os.path.join(directory, tmp), os.path.join(directory, files[-1]))
    weight_map.update({n: files[-1] for n in names})
  with open(os.path.join(directory, SAFETENSORS_INDEX), "w", encoding="utf-8") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
  return files + [SAFETENSORS_INDEX]
