"""Loads a Hugging Face directory onto a 2x2x2 mesh of 8 simulated CPU devices.

Run by tests/interop/test_hf.py in a child process (`python -m tests.interop.hf_mesh_check
DIR`, XLA_FLAGS giving 8 devices). Prints one JSON object: per param, the shape of the shard
on device 0, whether its sharding is the one the logical rules give, and whether the sharded
param equals the same param loaded on one device.
"""

import json
import sys

import flax
import jax
import ml_collections
import numpy as np

from configs import common
from rlhf_jax import sharding
from rlhf_jax.interop import hf
from rlhf_jax.models.transformer import param_shapes


def main(directory: str) -> None:
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=2)))
  model, params = hf.load(directory, mesh=mesh, rules=common.DEFAULT_RULES)
  _, single = hf.load(directory)
  expected = flax.traverse_util.flatten_dict(
      sharding.logical_shardings(param_shapes(model), mesh, common.DEFAULT_RULES), sep="/")
  flat, flat_single = (flax.traverse_util.flatten_dict(p, sep="/") for p in (params, single))
  report = {}
  for name, array in flat.items():
    shard = next(s for s in array.addressable_shards if s.device == jax.devices()[0])
    report[name] = {"shard": list(shard.data.shape), "sharding_as_rules": array.sharding == expected[name],
                    "equal": bool(np.array_equal(np.asarray(array), np.asarray(flat_single[name])))}
  print(json.dumps(report))


if __name__ == "__main__":
  main(sys.argv[1])
