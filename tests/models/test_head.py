"""The LM head read a chunk of positions at a time: the same statistics and gradients as the
model's own logits, for a fraction of their memory."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models import head
from rlhf_jax.models.transformer import Transformer
from tests.conftest import LLAMA, small_model

STYLES = {"tied": {}, "untied": LLAMA}


def setup(cfg, batch=3, time=10):
  params = nn.meta.unbox(Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  tokens = jax.random.randint(jax.random.key(1), (batch, time + 1), 0, cfg.vocab_size)
  return params, tokens


def objective(stats):
  """Every statistic the losses read, weighted so none cancels another."""
  return jnp.sum(stats.logprobs * 1.3 + stats.entropy * 0.7)


@pytest.mark.parametrize("style", STYLES)
def test_chunks_equal_the_models_logits_in_value_and_gradient(style):
  cfg = small_model(**STYLES[style])
  params, tokens = setup(cfg)

  def reference(p):  # from the whole logits, at temperature 0.7
    logits = Transformer(cfg).apply({"params": p}, tokens).logits[:, :-1]
    return head.stats_of_logits(logits, tokens[:, 1:], 0.7)

  want, want_grad = reference(params), jax.grad(lambda p: objective(reference(p)))(params)
  for chunk in (0, 4, 3, 9, 32):  # even, uneven (padded), one short of the time, beyond it
    model = Transformer(dataclasses.replace(cfg, logits_chunk=chunk))

    def chunked(p):
      out = model.apply({"params": p}, tokens, with_logits=False)
      return head.next_token_stats(model, p, out.hidden, tokens, 1, 0.7)

    got = chunked(params)
    for name in head.TokenStats._fields:
      np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-5, err_msg=name)
    grad = jax.grad(lambda p: objective(chunked(p)))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grad, want_grad)


def temp_bytes(chunk: int, time: int, vocab: int = 8192, batch: int = 2, embed: int = 32) -> int:
  """The compiled gradient's scratch memory of the chunked head's log-likelihood."""
  hidden = jax.ShapeDtypeStruct((batch, time, embed), jnp.float32)
  kernel = jax.ShapeDtypeStruct((embed, vocab), jnp.float32)
  targets = jax.ShapeDtypeStruct((batch, time), jnp.int32)
  loss = lambda h, k, y: jnp.sum(head.token_stats(h, k, y, dtype=jnp.float32, chunk=chunk).logprobs)
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(hidden, kernel, targets).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_gradient_memory_does_not_grow_with_the_logits():
  logits_bytes = lambda time: 2 * time * 8192 * 4
  whole = temp_bytes(0, 512)
  assert whole >= logits_bytes(512)  # at once: at least the float32 logits
  short, long = temp_bytes(64, 256), temp_bytes(64, 1024)
  assert long < short + logits_bytes(64)  # flat in time: one chunk's logits, however many chunks
  assert long < logits_bytes(1024) / 2
