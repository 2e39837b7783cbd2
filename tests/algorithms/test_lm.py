"""The masked next-token loss on hand-worked cases; SFT's prompt tokens get no gradient."""

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.algorithms.lm import next_token_loss
from rlhf_jax.models.logits import token_logprobs


def test_loss_on_a_hand_case():
  # Two positions over a 2-token vocab: p(target) = 0.5 and sigmoid(2) = 0.881.
  logits = jnp.array([[[0.0, 0.0], [2.0, 0.0]]])
  targets = jnp.array([[1, 0]])
  loss, metrics = next_token_loss(logits, targets, jnp.ones((1, 2)))
  expected = (np.log(2) + np.log1p(np.exp(-2.0))) / 2
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  np.testing.assert_allclose(metrics["nll"], 2 * expected, rtol=1e-6)
  assert float(metrics["tokens"]) == 2 and float(metrics["correct"]) == 1  # argmax of [0, 0] is 0
  np.testing.assert_allclose(token_logprobs(logits, targets), [[np.log(0.5), -np.log1p(np.exp(-2.0))]],
                             rtol=1e-6)


def test_weights_select_tokens_and_normalizer_overrides_the_count():
  logits = jax.random.normal(jax.random.key(0), (2, 5, 7))
  targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 7)
  weights = jnp.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
  loss, _ = next_token_loss(logits, targets, weights)
  nll = -token_logprobs(logits, targets)
  np.testing.assert_allclose(loss, (nll * weights).sum() / 5, rtol=1e-6)
  half, _ = next_token_loss(logits, targets, weights, normalizer=10.0)
  np.testing.assert_allclose(half, loss / 2, rtol=1e-6)


def test_sft_prompt_positions_get_no_gradient():
  logits = jax.random.normal(jax.random.key(2), (2, 6, 11))
  targets = jax.random.randint(jax.random.key(3), (2, 6), 0, 11)
  response = jnp.array([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 0]])
  grads = jax.grad(lambda x: next_token_loss(x, targets, response)[0])(logits)
  prompt_grads = np.asarray(grads)[np.asarray(response) == 0]
  assert np.all(prompt_grads == 0)
  assert np.all(np.abs(np.asarray(grads)[np.asarray(response) == 1]).sum(-1) > 0)
