"""Preference losses on hand cases against their papers' formulas, and their gradients."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from rlhf_jax.algorithms import dpo
from rlhf_jax.algorithms.dpo import PREFERENCE_LOSSES, PreferenceInputs, PreferenceParams

# Policy prefers chosen by 1 nat more than the reference in pair 0, 1 nat less in pair 1.
PC, PR = jnp.array([-10.0, -12.0]), jnp.array([-12.0, -10.0])
RC, RR = jnp.array([-11.0, -11.0]), jnp.array([-12.0, -10.0])  # h = [1, -1]
LENGTHS = (jnp.array([5.0, 4.0]), jnp.array([4.0, 2.0]))
PAIRS = PreferenceInputs(PC, PR, RC, RR, *LENGTHS)
l = lambda z: np.log1p(np.exp(-np.asarray(z)))  # -log sigmoid(z)


def losses(kind, x=PAIRS, **params):
  return np.asarray(jax.jit(dpo.preference_losses, static_argnums=(1, 2))(x, kind, PreferenceParams(**params)))


def test_dpo_and_its_label_noise_variants_on_hand_cases():
  np.testing.assert_allclose(dpo.logratio_margin(PC, PR, RC, RR), [1.0, -1.0])
  np.testing.assert_allclose(losses("sigmoid", beta=0.5), l([0.5, -0.5]), rtol=1e-6)
  # At the reference (h = 0) the loss is log 2 whatever beta.
  at_ref = PreferenceInputs(RC, RR, RC, RR, *LENGTHS)
  np.testing.assert_allclose(losses("sigmoid", at_ref, beta=3.0), [np.log(2.0)] * 2, rtol=1e-6)
  np.testing.assert_allclose(losses("conservative", beta=2.0, label_smoothing=0.1),
                             0.9 * l([2.0, -2.0]) + 0.1 * l([-2.0, 2.0]), rtol=1e-6)
  # rDPO: [(1 - eps) l(z) - eps l(-z)] / (1 - 2 eps), unbiased for flipped labels.
  np.testing.assert_allclose(losses("robust", beta=2.0, label_smoothing=0.1),
                             (0.9 * l([2.0, -2.0]) - 0.1 * l([-2.0, 2.0])) / 0.8, rtol=1e-5)
  for kind in ("conservative", "robust"):
    np.testing.assert_allclose(losses(kind, beta=0.5), losses("sigmoid", beta=0.5), rtol=1e-6)


def test_ipo_hinge_and_simpo_on_hand_cases():
  # IPO: (h - 1 / (2 beta))^2 with beta 0.5 -> target margin 1: pair 0 is on target, pair 1 is 2 short.
  np.testing.assert_allclose(losses("ipo", beta=0.5), [0.0, 4.0], rtol=1e-6)
  # Length-normalised: h = 1/5 - 0/4 = 0.2 and -1/4 - 0/2 = -0.25 (the log-ratios per token).
  np.testing.assert_allclose(losses("ipo", beta=0.5, length_normalise=True), [0.64, 1.5625], rtol=1e-5)
  # SLiC: max(0, 1 - beta h) -> beta 2: max(0, -1) = 0 and 3.
  np.testing.assert_allclose(losses("hinge", beta=2.0), [0.0, 3.0], rtol=1e-6)
  # SimPO, no reference: l(beta (-10/5 - -12/4) - gamma) = l(2 * 1 - 0.5) and l(2 * (-3 + 5) - 0.5).
  no_ref = PreferenceInputs(PC, PR, jnp.zeros(2), jnp.zeros(2), *LENGTHS)
  np.testing.assert_allclose(losses("simpo", no_ref, beta=2.0, gamma=0.5), l([1.5, 3.5]), rtol=1e-6)
  np.testing.assert_allclose(losses("simpo", beta=2.0, gamma=0.5), l([1.5, 3.5]), rtol=1e-6)  # ignores ref
  assert [k for k, v in PREFERENCE_LOSSES.items() if not v.needs_reference] == ["simpo"]


def test_gradients_match_finite_differences_and_push_the_margin_up():
  for kind in PREFERENCE_LOSSES:
    f = jax.jit(lambda pc, pr, kind=kind: jnp.mean(dpo.preference_losses(
        PreferenceInputs(pc, pr, RC, RR, *LENGTHS), kind, PreferenceParams(beta=0.5, label_smoothing=0.1))))
    check_grads(f, (PC + 0.3, PR - 0.1), order=1, modes=("rev",), eps=1e-2, atol=1e-2, rtol=1e-2)
    grad_chosen, grad_rejected = jax.grad(f, argnums=(0, 1))(PC, PR)
    # Minimising raises chosen log-probs and lowers rejected ones (where the loss is not flat).
    assert np.all(np.asarray(grad_chosen) <= 0) and np.all(np.asarray(grad_rejected) >= 0), kind
    assert float(grad_chosen[1]) < 0, kind  # pair 1's margin is wrong: every loss pushes it
