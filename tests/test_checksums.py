"""Checkpoint checksums (rlhf_jax/checkpoint.py): the sum of an array sharded over processes is
the same however it is laid out, and a checksum taken another way is not compared."""

import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from rlhf_jax import checkpoint
from tests.conftest import xla_flags
from tests.test_main import ROOT

LAYOUTS = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from rlhf_jax.checkpoint import sharded_sum
mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2), ("a", "b"))
x = jax.random.normal(jax.random.key(0), (64, 48)).astype(jnp.bfloat16)
sums = {sharded_sum(jax.device_put(x, NamedSharding(mesh, spec))) for spec in (P(), P("a"), P("a", "b"), P(None, "b"))}
print(len(jax.devices()), sums == {sharded_sum(x)}, sharded_sum(x.at[5, 7].add(1)) != sharded_sum(x))
"""


def test_the_sharded_sum_does_not_depend_on_the_layout_and_sees_one_changed_value():
  env = dict(os.environ, XLA_FLAGS=xla_flags(8), PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", LAYOUTS], capture_output=True, text=True, env=env, timeout=300)
  assert result.stdout.split() == ["8", "True", "True"], result.stderr[-2000:]


def test_a_mismatch_is_an_error_and_a_checksum_taken_another_way_is_not_compared():
  tree = {"w": jnp.arange(6.0)}
  written = checkpoint.checksums(tree)
  checkpoint.verify(written, tree, "params")
  with pytest.raises(checkpoint.ChecksumError, match=r"checksum mismatch in params/w: written crc:"):
    checkpoint.verify(written, {"w": jnp.arange(6.0).at[2].set(7.0)}, "params")
  summed = {"w": f"sum:{checkpoint.sharded_sum(tree['w']) ^ 1:08x} float32 [6]"}  # as if read sharded
  checkpoint.verify(summed, tree, "params")
