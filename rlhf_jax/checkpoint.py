"""Orbax checkpoints of a run: pytrees of arrays saved as named items, plus JSON metadata.

A checkpoint at step s holds `items` (e.g. params, opt_state) and `meta` (step, data
position, ...). Items restore one by one, so a downstream stage can read just `params`.
Shapes are checked against the model before restoring: a checkpoint that does not fit
gives one clear line, not an error from deep inside the restore.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from rlhf_jax.errors import UserError


class Checkpointer:

  def __init__(self, directory: str, items: tuple[str, ...], keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.items = tuple(items)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    # Handlers named up front, so a fresh manager can read item metadata before any restore.
    handlers = {name: ocp.StandardCheckpointHandler() for name in self.items}
    handlers["meta"] = ocp.JsonCheckpointHandler()
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, items: dict, meta: dict) -> None:
    args = {name: ocp.args.StandardSave(_as_tree(items[name])) for name in self.items}
    self.manager.save(step, args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **args), force=True)

  def restore(self, abstract: dict, step=None) -> tuple[dict, dict]:
    """Restores the items named in `abstract` (trees of ShapeDtypeStruct with shardings)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f"no checkpoint in {self.directory}")
    stored = self.manager.item_metadata(step)
    for name, tree in abstract.items():
      check_shapes(stored[name], _as_tree(tree), f"{self.directory}/{step}/{name}")
    args = {name: ocp.args.StandardRestore(_as_tree(tree)) for name, tree in abstract.items()}
    restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore(), **args))
    return {name: _from_tree(restored[name], abstract[name]) for name in abstract}, restored["meta"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


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
