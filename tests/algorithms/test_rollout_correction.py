"""The sampler/trainer mismatch's metrics and corrections on hand cases."""

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms.rollout_correction import (ROLLOUT_CORRECTIONS, CorrectionParams, correction_weights,
                                                    mismatch_metrics)

# Two responses of 3 and 2 tokens (the last of the second is padding, whose log-probs are junk).
MASK = jnp.array([[1, 1, 1], [1, 1, 0]])
SAMPLER = jnp.log(jnp.array([[0.5, 0.5, 0.5], [0.5, 0.5, 1.0]]))
W = jnp.array([[1.0, 3.0, 0.25], [1.2, 1.5, 1.0]])  # trainer / sampler per token
TRAINER = SAMPLER + jnp.log(W).at[1, 2].set(-jnp.inf)


@pytest.mark.parametrize("kind,want", [
    ("none", [[1, 1, 1], [1, 1, 1]]),
    ("token_tis", [[1, 2, 0.25], [1.2, 1.5, 1]]),
    ("sequence_tis", [[0.75, 0.75, 0.75], [1.8, 1.8, 1]]),  # products 0.75 and 1.8, under the cap of 2
    ("token_reject", [[1, 0, 0], [1, 1, 1]]),  # 3 and 0.25 outside [0.5, 2]
    ("sequence_reject", [[1, 1, 1], [1, 1, 1]]),  # geometric means 0.91 and 1.34: kept
])
def test_each_correction_on_hand_cases(kind, want):
  weights, _ = correction_weights(kind, TRAINER, SAMPLER, MASK, CorrectionParams(cap=2.0, low=0.5, high=2.0))
  np.testing.assert_allclose(weights, want, rtol=1e-6)


def test_sequence_bounds_drop_a_whole_sequence_and_the_cap_binds_on_the_product():
  hp = CorrectionParams(cap=1.5, low=0.95, high=1.05)
  np.testing.assert_allclose(correction_weights("sequence_tis", TRAINER, SAMPLER, MASK, hp)[0][1, :2], [1.5, 1.5])
  weights, changed = correction_weights("sequence_reject", TRAINER, SAMPLER, MASK, hp)
  np.testing.assert_array_equal(weights, [[0, 0, 0], [0, 0, 1]])
  assert float(changed) == pytest.approx(1.0)  # every real token's weight differs from its ratio
  assert set(ROLLOUT_CORRECTIONS) == {"none", "token_tis", "sequence_tis", "token_reject", "sequence_reject"}


def test_the_mismatch_metrics_are_zero_when_the_engines_agree():
  same = mismatch_metrics(SAMPLER, SAMPLER, MASK)
  assert float(same["rollout/logprob_gap_max"]) == 0.0 and float(same["rollout/kl"]) == 0.0
  assert float(same["rollout/ess"]) == pytest.approx(1.0)
  got = mismatch_metrics(TRAINER, SAMPLER, MASK)
  w = np.array([1.0, 3.0, 0.25, 1.2, 1.5])
  assert float(got["rollout/logprob_gap_max"]) == pytest.approx(np.log(4.0))
  assert float(got["rollout/logprob_gap_mean"]) == pytest.approx(np.mean(np.abs(np.log(w))), rel=1e-5)
  assert float(got["rollout/kl"]) == pytest.approx(np.mean(w - 1 - np.log(w)), rel=1e-5)
  assert float(got["rollout/ess"]) == pytest.approx(w.sum() ** 2 / (5 * np.sum(w ** 2)), rel=1e-5)
