"""Packed preference rows (data.pack for the reward and DPO stages, data.share_prompt too): every
pair once, and the reward model's and DPO's losses and gradients exactly those of the same pairs
one per row."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rlhf_jax.data import batches
from rlhf_jax.errors import UserError
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.preference import dpo_steps, pairs, reward_steps
from tests.conftest import small_model
from tests.data.test_batches import TOK

SEQ_LEN = 24


def triples(n=12, seed=0):
  """Token-id (prompt, chosen, rejected) of uneven lengths, so rows hold 1-3 pairs."""
  rng = np.random.default_rng(seed)
  ids = lambda low, high: rng.integers(3, 250, rng.integers(low, high)).tolist()
  return [(ids(2, 8), ids(1, 14), ids(1, 14)) for _ in range(n)]


def both_layouts(n=12, share_prompt=False):
  """All n pairs in one batch, one pair per row and packed (each prompt held once with `share_prompt`)."""
  one, packed = (batches.PreferenceData(triples(n), TOK, SEQ_LEN, 4, 0, shuffle=False, pack=p, share_prompt=s)
                 for p, s in ((False, False), (True, share_prompt)))
  return one.rows(np.arange(one.num_rows)), packed.rows(np.arange(packed.num_rows))


def test_packed_rows_hold_every_pair_once_as_adjacent_segments():
  one, packed = both_layouts()
  assert packed["tokens"].shape[1] == 2 * SEQ_LEN and packed["loss_mask"].sum() == 12
  assert packed["tokens"].shape[0] < 12 and packed["loss_mask"].shape[1] >= 2  # rows shared
  found = []
  for row in range(len(packed["tokens"])):
    for slot in np.flatnonzero(packed["loss_mask"][row]):
      pick = lambda s: packed["tokens"][row][packed["segments"][row] == s].tolist()
      found.append((pick(2 * slot + 1), pick(2 * slot + 2)))
  expected = [(one["chosen"][i][one["chosen_mask"][i] > 0].tolist(),
               one["rejected"][i][one["rejected_mask"][i] > 0].tolist()) for i in range(12)]
  assert sorted(found) == sorted(expected)
  # The response marks stay each sequence's: as many response tokens as one per row.
  assert packed["response"].sum() == one["chosen_response"].sum() + one["rejected_response"].sum()


def test_shared_prompt_rows_hold_each_prompt_once_and_the_rejected_continues_its_positions():
  one, shared = both_layouts(share_prompt=True)
  _, packed = both_layouts()
  prompt_tokens = [int(np.flatnonzero(r)[0]) for r in one["rejected_response"]]  # BOS and prompt
  saved = sum(prompt_tokens) - 12  # each rejected sequence keeps its prompt's last token
  assert shared["mask"].sum() == packed["mask"].sum() - saved
  assert shared["response"].sum() == packed["response"].sum()
  found = []
  for row in range(len(shared["tokens"])):
    for slot in np.flatnonzero(shared["loss_mask"][row]):
      chosen, rejected = (shared["segments"][row] == s for s in (2 * slot + 1, 2 * slot + 2))
      prefix = (shared["shared"][row] > 0) & chosen  # the shared tokens are the chosen sequence's first
      start = np.flatnonzero(chosen)[0]
      assert prefix[start:start + prefix.sum()].all()
      # The rejected sequence as it would be alone: the chosen one's prompt, then its own tokens.
      whole = np.concatenate([shared["tokens"][row][prefix], shared["tokens"][row][rejected]])
      np.testing.assert_array_equal(shared["positions"][row][chosen], np.arange(chosen.sum()))
      np.testing.assert_array_equal(shared["positions"][row][rejected], np.arange(prefix.sum(), len(whole)))
      found.append((shared["tokens"][row][chosen].tolist(), whole.tolist()))
  expected = [(one["chosen"][i][one["chosen_mask"][i] > 0].tolist(),
               one["rejected"][i][one["rejected_mask"][i] > 0].tolist()) for i in range(12)]
  assert sorted(found) == sorted(expected)


def test_a_shared_prompt_needs_packed_rows():
  with pytest.raises(UserError, match="data.pack=True"):
    batches.PreferenceData(triples(2), TOK, SEQ_LEN, 2, 0, share_prompt=True)


def model_and_params(heads=()):
  model = Transformer(small_model(vocab_size=259, heads=heads, position="rope"))
  return model, nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])


def assert_same_sums_and_gradients(loss_fn, params, one, packed):
  """Equal summed metrics and gradients; pairs come in another order, so only sums compare."""
  (_, sums_one), grads_one = jax.value_and_grad(loss_fn, has_aux=True)(params, one)
  (_, sums_packed), grads_packed = jax.value_and_grad(loss_fn, has_aux=True)(params, packed)
  for key in sums_one:
    np.testing.assert_allclose(sums_packed[key], sums_one[key], rtol=2e-5, atol=1e-5, err_msg=key)
  # atol: a few gradient entries near 1e-3 differ by ~1e-6 in float32 (rows of other lengths sum in another order)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=3e-6), grads_packed, grads_one)


@pytest.mark.parametrize("share_prompt", [False, True])
def test_reward_model_scores_and_loss_are_those_of_one_pair_per_row(share_prompt):
  model, params = model_and_params(heads=("reward",))
  one, packed = both_layouts(share_prompt=share_prompt)
  rewards = [reward_steps.pair_rewards(params, b, model=model) for b in (one, packed)]
  weights = pairs.pair_weights(packed) > 0
  for side in range(2):  # the same multiset of scores, each pair's from its own last token
    np.testing.assert_allclose(np.sort(rewards[1][side][weights]), np.sort(rewards[0][side]), rtol=1e-5, atol=1e-6)
  loss = lambda p, b: reward_steps.pair_loss(p, b, 12.0, model=model)
  assert_same_sums_and_gradients(loss, params, one, packed)


@pytest.mark.parametrize("loss,share_prompt", [("sigmoid", False), ("ipo_normalised", False), ("simpo", False),
                                               ("sigmoid", True), ("ipo_normalised", True)])
def test_dpo_log_probs_and_loss_are_those_of_one_pair_per_row(loss, share_prompt):
  model, params = model_and_params()
  reference = jax.tree.map(lambda p: p * 0.9, params)
  cfg = ml_collections.ConfigDict(dict(beta=0.1, loss=loss.removesuffix("_normalised"), label_smoothing=0.0,
                                       gamma=0.5, length_normalise=loss.endswith("_normalised")))
  one, packed = both_layouts(share_prompt=share_prompt)
  with_ref = lambda b: {**b, **dict(zip(("ref_chosen", "ref_rejected"), dpo_steps.pair_logps(model, reference, b)))}
  one, packed = with_ref(one), with_ref(packed)
  lengths = [dpo_steps.pair_lengths(b)[0] for b in (one, packed)]
  np.testing.assert_array_equal(np.sort(lengths[1][pairs.pair_weights(packed) > 0]), np.sort(lengths[0]))
  loss_fn = lambda p, b: dpo_steps.pair_loss(p, b, model=model, cfg=cfg, normalizer=12.0)
  assert_same_sums_and_gradients(loss_fn, params, one, packed)
