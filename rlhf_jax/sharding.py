"""The one place that maps logical axis names to a device mesh.

Models name logical axes only (`embed`, `mlp`, `heads`, ...). The config's `mesh` gives the
mesh shape over axes (data, fsdp, tensor), and `sharding_rules` maps each logical name to
mesh axes. Everything placed on devices gets its `NamedSharding` from here. An MoE model's
`expert` axis (models/moe.py) maps to `fsdp` by default: expert parallelism without a mesh axis
of its own (configs/common.py's DEFAULT_RULES say why).
"""

import contextvars
import functools
import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlhf_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Sizes of (data, fsdp, tensor); one -1 takes the devices the others leave."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise UserError(f"config.mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    sizes[sizes.index(-1)] = num_devices // known if known and num_devices % known == 0 else 0
  if math.prod(sizes) != num_devices or 0 in sizes:
    raise UserError(f"config.mesh {dict(zip(MESH_AXES, [int(mesh_cfg[a]) for a in MESH_AXES]))} "
                    f"does not divide the {num_devices} available devices")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def rules_of(config) -> tuple:
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in config.sharding_rules)


def logical_shardings(boxed_tree, mesh: Mesh, rules):
  """NamedShardings for a tree whose leaves carry logical names (flax Partitioned boxes).

  Leaves without names (step counters, optimizer counts) are replicated.
  """
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def abstract(tree, shardings):
  """ShapeDtypeStructs of `tree`'s leaves laid out by `shardings` (a matching tree, or one
  sharding for all): what orbax restores into and what `jax.make_array_from_callback` fills."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def abstract_placed(boxed_tree, mesh: Mesh, rules):
  """`abstract` of a boxed tree (e.g. `param_shapes`), each leaf sharded as its logical axes say."""
  return abstract(nn.meta.unbox(boxed_tree), logical_shardings(boxed_tree, mesh, rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches split their leading axis over every data-parallel axis."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def put_batch(batch: dict, mesh: Mesh) -> dict:
  """Host numpy rows of this process -> one global array per field."""
  sharding = batch_sharding(mesh)
  rows, ways = len(next(iter(batch.values()))) * jax.process_count(), mesh.shape["data"] * mesh.shape["fsdp"]
  if rows % ways:
    raise UserError(f"a batch of {rows} rows does not split over the {ways} data-parallel devices "
                    "(mesh.data x mesh.fsdp): change data.batch_size or the mesh")
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order, each once (the inverse of
  `put_batch` for one field)."""
  shards = {shard.index[0].start or 0: shard for shard in x.addressable_shards}
  return np.concatenate([np.asarray(shards[start].data) for start in sorted(shards)])


# The (mesh, rules) that `constrain` lays activations out by, set while a step is traced.
_LAYOUT = contextvars.ContextVar("activation_layout", default=None)


def with_rules(fn, mesh: Mesh, rules):
  """`fn`, traced with the mesh and the logical rules in scope, so the models' activation
  constraints (`constrain`) bind to mesh axes; outside such a trace they are no-ops.

  Our own context rather than flax's `logical_axis_rules`: under flax's, DenseGeneral
  constrains its flattened kernel by the unflattened kernel's names and fails.
  """

  @functools.wraps(fn)
  def traced(*args, **kwargs):
    token = _LAYOUT.set((mesh, rules))
    try:
      return fn(*args, **kwargs)
    finally:
      _LAYOUT.reset(token)

  return traced


def current_layout():
  """The (mesh, rules) of the step being traced under `with_rules`; None elsewhere (init, eval_shape)."""
  return _LAYOUT.get()


def axes_tuple(entry) -> tuple:
  """One entry of a PartitionSpec as a tuple of mesh axes: None -> (), "fsdp" -> ("fsdp",)."""
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def constrain(x, names: tuple):
  """`x` laid out by its logical axis names (the rules may leave a name unsharded, e.g.
  `embed` once `batch` holds the fsdp axis)."""
  layout = _LAYOUT.get()
  if layout is None:
    return x
  mesh, rules = layout
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, nn.logical_to_mesh_axes(names, rules)))
