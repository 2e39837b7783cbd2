"""Orbax checkpoints of a run: pytrees of arrays saved as named items, plus JSON metadata.

A checkpoint at step s holds `items` (e.g. params, opt_state) and `meta` (step, data
position, ...). Items restore one by one, so a downstream stage can read just `params`.
`meta` also holds each array's checksum, dtype and shape, checked on restore: bytes damaged on
disk make that step unreadable (set aside, or for another run's checkpoint an error), never
wrong weights.
Shapes are checked against the model before restoring: a checkpoint that does not fit
gives one clear line, not an error from deep inside the restore.
"""

import glob
import os
import time
import zlib

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from rlhf_jax.errors import UserError

TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's name for a step directory still being written


class Checkpointer:

  def __init__(self, directory: str, items: tuple[str, ...], keep: int = 2, read_only: bool = False):
    """`read_only`: another run's checkpoints (a starting point), which nothing here may change:
    no directory created, no half-written step removed, no unreadable step set aside."""
    self.directory = os.path.abspath(directory)
    self.items = tuple(items)
    self.read_only = read_only
    if read_only:  # (orbax's own read_only option warns twice per restore, on every stage's terminal)
      options = ocp.CheckpointManagerOptions(create=False, cleanup_tmp_directories=False, save_root_metadata=False)
    else:
      warn_half_written(self.directory)
      # A kill mid-write leaves STEP.orbax-checkpoint-tmp behind: orbax then removes it, so
      # that step can be written again.
      options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True)
    # Handlers named up front, so a fresh manager can read item metadata before any restore.
    handlers = {name: ocp.StandardCheckpointHandler() for name in self.items}
    handlers["meta"] = ocp.JsonCheckpointHandler()
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, items: dict, meta: dict) -> None:
    args = {name: ocp.args.StandardSave(_as_tree(items[name])) for name in self.items}
    meta = {**meta, "checksums": {name: checksums(_as_tree(items[name])) for name in self.items}}
    self.manager.save(step, args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **args), force=True)

  def restore(self, abstract: dict, step=None) -> tuple[dict, dict]:
    """Restores the items named in `abstract` (trees of ShapeDtypeStruct with shardings), from
    `step` or else the newest readable checkpoint: one that cannot be read (a file lost or cut
    short) is skipped with a warning. Orbax writes each checkpoint to a temporary directory
    and renames it when complete, so a kill mid-write leaves no step behind to skip."""
    steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      raise UserError(f"no checkpoint in {self.directory}")
    if step is not None and step not in self.manager.all_steps():
      raise UserError(f"checkpoint {self.directory}/{step} is missing")
    for i, candidate in enumerate(steps):
      try:
        return self._restore(abstract, candidate)
      except UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        if step is not None or i == len(steps) - 1 or self.read_only:
          raise UserError(f"checkpoint {self.directory}/{candidate} is unreadable: {_first_line(e)}") from None
        logging.warning("checkpoint %s/%d is unreadable, so it is set aside as %d.unreadable (%s); "
                        "trying step %d", self.directory, candidate, candidate, _first_line(e), steps[i + 1])
        self._set_aside(candidate)

  def _set_aside(self, step: int) -> None:
    """Renames an unreadable step's directory (kept for inspection, never deleted), so the
    resumed run can write that step again."""
    if jax.process_index() == 0:
      path = os.path.join(self.directory, str(step))
      aside = f"{path}.unreadable"
      if os.path.exists(aside):  # that step went bad before: keep both
        aside = f"{aside}.{time.time_ns()}"
      os.replace(path, aside)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"set aside {self.directory}/{step}")
    self.manager.reload()

  def _restore(self, abstract: dict, step: int) -> tuple[dict, dict]:
    stored = self.manager.item_metadata(step)
    for name, tree in abstract.items():
      check_shapes(stored[name], _as_tree(tree), f"{self.directory}/{step}/{name}")
    args = {name: ocp.args.StandardRestore(_as_tree(tree)) for name, tree in abstract.items()}
    restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore(), **args))
    stored_sums = restored["meta"].get("checksums", {})  # none in checkpoints written before them
    for name in abstract:
      verify(stored_sums.get(name, {}), restored[name], name)
    return {name: _from_tree(restored[name], abstract[name]) for name in abstract}, restored["meta"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def warn_half_written(directory: str) -> None:
  for path in sorted(glob.glob(os.path.join(directory, f"*{TMP_SUFFIX}*"))):
    logging.warning("half-written checkpoint %s (the run was killed while writing it) is ignored and removed",
                    path)


class ChecksumError(Exception):
  """An array read back differs from the one written: the step is unreadable."""


def checksums(tree) -> dict:
  """{path: "METHOD:HEX dtype shape"} of every array of `tree`: the CRC-32 of its bytes where this
  process holds its values whole (one process, or replicated over several), else (sharded over
  processes) `sharded_sum`, computed by all of them on the device."""
  sums = {}
  for path, leaf in _flat(tree).items():
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable and not leaf.is_fully_replicated:
      sums[path] = f"sum:{sharded_sum(leaf):08x} {leaf.dtype} {list(leaf.shape)}"
      continue
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = leaf.addressable_data(0)  # replicated: this process's copy is the whole array
    values = np.ascontiguousarray(np.asarray(leaf))
    sums[path] = f"crc:{zlib.crc32(values.tobytes()):08x} {values.dtype} {list(values.shape)}"
  return sums


@jax.jit
def _weighted_bits(x):
  """sum_i bits(x_i) * (2654435761 i + 1) mod 2^32: integer, so any reduction order gives it."""
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
  bits = (x if x.dtype == jnp.bool_ else jax.lax.bitcast_convert_type(x, unsigned)).astype(jnp.uint32).reshape(-1)
  weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
  return jnp.sum(bits * weights, dtype=jnp.uint32)


def sharded_sum(x) -> int:
  """`_weighted_bits` of an array however it is laid out (every process calls it)."""
  return int(np.asarray(_weighted_bits(x).addressable_data(0)))


def verify(stored: dict, tree, item: str) -> None:
  """Raises ChecksumError naming the first array of `tree` whose checksum is not `stored`'s;
  one summed another way (written on one process, read sharded over several) is not compared."""
  read = checksums(tree)
  method = lambda s: s.split(":", 1)[0]
  for path, expected in stored.items():
    if path in read and method(read[path]) == method(expected) and read[path] != expected:
      raise ChecksumError(f"checksum mismatch in {item}/{path}: written {expected}, read {read[path]}")


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:300] if text else type(error).__name__


def _is_single_array(x) -> bool:
  return isinstance(x, (jax.Array, jax.ShapeDtypeStruct, np.ndarray))


def _as_tree(item):
  """Orbax saves pytrees, not bare arrays (an rng key): wrap one in a dict."""
  return {"array": item} if _is_single_array(item) else item


def _from_tree(restored, abstract):
  return restored["array"] if _is_single_array(abstract) else restored


def _flat(tree) -> dict:
  """{path: leaf} with paths as plain strings: orbax stores named tuples as dicts, so
  `.count` and `['count']` must compare equal."""
  name = lambda k: str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
  return {"/".join(map(name, path)): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_shapes(stored, expected, where: str) -> None:
  """Raises UserError naming the first parameter whose stored shape differs from the model's."""
  flat_stored, flat_expected = _flat(stored), _flat(expected)
  missing = [k for k in flat_expected if k not in flat_stored]
  if missing:
    raise UserError(f"checkpoint {where} does not fit the model: it lacks {missing[0]} "
                    f"({len(missing)} entries missing)")
  for key, leaf in flat_expected.items():
    shape = tuple(getattr(flat_stored[key], "shape", np.shape(flat_stored[key])))
    if shape != tuple(leaf.shape):
      raise UserError(f"checkpoint {where} does not fit the model: {key} "
                      f"has shape {shape}, the model wants {tuple(leaf.shape)}")
