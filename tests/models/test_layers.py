"""Attention: our einsum attention against JAX's own, full-forward layout, with pads and GQA; the
projections' weight_product against dot_general, gradients included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models import layers


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_attend_matches_jax_dot_product_attention(heads, kv_heads):
  q, k, v = (jax.random.normal(jax.random.key(i), (3, 7, h, 8)) for i, h in enumerate((heads, kv_heads, kv_heads)))
  real = jnp.arange(7)[None] >= jnp.array([[0], [2], [5]])  # rows left-padded by 0, 2 and 5 tokens
  mask = jnp.tril(jnp.ones((7, 7), bool))[None, None] & real[:, None, None, :]
  ours = layers.attend(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask)
  theirs = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation="xla")
  np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_attend_in_bfloat16_matches_jax_and_float32_gradients():
  """float32 scores from bfloat16 q and k (as jax.nn's attention), and a backward pass that runs."""
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 5, 2, 16)) for i in range(3))
  mask = jnp.tril(jnp.ones((5, 5), bool))[None, None]
  heads_major = lambda q, k, v: (q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask)
  bf16 = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  ours = layers.attend(*heads_major(*bf16))
  theirs = jax.nn.dot_product_attention(*bf16, mask=mask, is_causal=True, implementation="xla")
  assert ours.dtype == jnp.bfloat16
  np.testing.assert_allclose(ours.astype(jnp.float32), theirs.astype(jnp.float32), atol=2e-2)
  loss = lambda *qkv: jnp.sum(layers.attend(*heads_major(*qkv)).astype(jnp.float32) ** 2)
  for exact, rounded in zip(jax.grad(loss, (0, 1, 2))(q, k, v), jax.jit(jax.grad(loss, (0, 1, 2)))(*bf16)):
    assert rounded.dtype == jnp.bfloat16
    np.testing.assert_allclose(rounded.astype(jnp.float32), exact, atol=0.02 * float(jnp.abs(exact).max()))


@pytest.mark.parametrize("x_shape,kernel_shape,in_dims", [
    ((2, 5, 8), (8, 32), 1),       # x narrower than the output: x is transposed
    ((2, 5, 32), (32, 8), 1),      # x wider: the output's gradient is, and the kernel's gradient back
    ((2, 5, 8), (8, 3, 2, 4), 1),  # stacked q/k/v
    ((2, 5, 4, 6), (4, 6, 8), 2),  # heads and head_dim in, as the attention's output projection
])
def test_weight_product_gradients_equal_dot_generals(x_shape, kernel_shape, in_dims):
  x, kernel = (jax.random.normal(jax.random.key(i), s) for i, s in enumerate((x_shape, kernel_shape)))
  contract = (tuple(range(len(x_shape) - in_dims, len(x_shape))), tuple(range(in_dims)))
  plain = lambda x, kernel: jax.lax.dot_general(x, kernel, (contract, ((), ())))
  ours = lambda x, kernel: layers.weight_product(x, kernel, in_dims)
  np.testing.assert_allclose(ours(x, kernel), plain(x, kernel), atol=1e-5)
  weights = jax.random.normal(jax.random.key(2), plain(x, kernel).shape)
  loss = lambda f: lambda x, kernel: jnp.sum(jnp.sin(f(x, kernel)) * weights)
  for got, want in zip(jax.jit(jax.grad(loss(ours), (0, 1)))(x, kernel), jax.grad(loss(plain), (0, 1))(x, kernel)):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)
