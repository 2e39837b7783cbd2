"""DPO, conservative DPO and IPO on hand cases, and their gradients."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from rlhf_jax.algorithms import dpo

# Policy prefers chosen by 1 nat more than the reference in pair 0, 1 nat less in pair 1.
PC, PR = jnp.array([-10.0, -12.0]), jnp.array([-12.0, -10.0])
RC, RR = jnp.array([-11.0, -11.0]), jnp.array([-12.0, -10.0])  # h = [1, -1]


def test_dpo_loss_on_hand_cases():
  np.testing.assert_allclose(dpo.logratio_margin(PC, PR, RC, RR), [1.0, -1.0])
  expected = np.mean([np.log1p(np.exp(-0.5)), np.log1p(np.exp(0.5))])  # -log sigmoid(0.5 h)
  np.testing.assert_allclose(dpo.dpo_loss(PC, PR, RC, RR, beta=0.5), expected, rtol=1e-6)
  # At the reference (h = 0) the loss is log 2 whatever beta.
  np.testing.assert_allclose(dpo.dpo_loss(RC, RR, RC, RR, beta=3.0), np.log(2.0), rtol=1e-6)


def test_ipo_and_conservative_losses_on_hand_cases():
  # IPO: (h - 1 / (2 beta))^2 with beta 0.5 -> target margin 1: pair 0 is on target, pair 1 is 2 short.
  np.testing.assert_allclose(dpo.ipo_loss(PC, PR, RC, RR, beta=0.5), (0.0 + 4.0) / 2, rtol=1e-6)
  h = jnp.array([2.0])
  smoothed = dpo.preference_losses(h, 1.0, "conservative", label_smoothing=0.1)
  np.testing.assert_allclose(smoothed, 0.9 * np.log1p(np.exp(-2.0)) + 0.1 * np.log1p(np.exp(2.0)), rtol=1e-6)
  np.testing.assert_allclose(dpo.preference_losses(h, 1.0, "conservative", 0.0),
                             dpo.preference_losses(h, 1.0, "sigmoid"), rtol=1e-6)


def test_gradients_match_finite_differences_and_push_the_margin_up():
  for loss in (dpo.dpo_loss, dpo.ipo_loss):
    f = jax.jit(lambda pc, pr, loss=loss: loss(pc, pr, RC, RR, 0.5))
    check_grads(f, (PC, PR), order=2, modes=("fwd", "rev"), eps=1e-2, atol=1e-2, rtol=1e-2)
  grad_chosen, grad_rejected = jax.grad(lambda pc, pr: dpo.dpo_loss(pc, pr, RC, RR, 0.5), argnums=(0, 1))(PC, PR)
  # Minimising raises chosen log-probs and lowers rejected ones, more where the margin is wrong.
  assert np.all(np.asarray(grad_chosen) < 0) and np.all(np.asarray(grad_rejected) > 0)
  assert abs(float(grad_chosen[1])) > abs(float(grad_chosen[0]))
