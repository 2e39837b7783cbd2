"""DPO's compiled step: learns a preference, leaves the frozen reference untouched."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rlhf_jax.algorithms.kl import init_kl_controller
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.preference.dpo_steps import dpo_train_step, pair_logps
from rlhf_jax.training.rl.rl_state import RLState
from tests.conftest import small_model

VOCAB = 16


def pairs(n=8, length=8):
  """BOS(1) prompt(2 tokens) then a 3-token response: chosen all 5s, rejected all 6s, then pad."""
  prompt = np.random.default_rng(0).integers(7, 15, (n, 2))
  make = lambda token: np.concatenate([np.ones((n, 1)), prompt, np.full((n, 3), token), np.zeros((n, 2))], 1)
  mask = np.concatenate([np.ones((n, 6)), np.zeros((n, 2))], 1)
  response = np.concatenate([np.zeros((n, 3)), np.ones((n, 3)), np.zeros((n, 2))], 1)
  batch = {"chosen": make(5), "rejected": make(6), "chosen_mask": mask, "rejected_mask": mask,
           "chosen_response": response, "rejected_response": response, "loss_mask": np.ones((n, 1))}
  return {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}


def test_dpo_steps_learn_the_preference_and_leave_the_reference_alone():
  model = Transformer(small_model(vocab_size=VOCAB, max_len=8))
  params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  tx = optax.adam(3e-3)
  state = RLState(step=jnp.int32(0), policy=params, policy_opt=tx.init(params), value=None, value_opt=None,
                  ref=jax.tree.map(jnp.copy, params), reward={}, kl=init_kl_controller(0.0),
                  baseline=jnp.float32(0.0), rng=jax.random.key(1))
  ref_before = jax.device_get(state.ref)
  cfg = ml_collections.ConfigDict(dict(beta=0.1, loss="sigmoid", label_smoothing=0.0, gamma=1.0,
                                       length_normalise=False))
  step = jax.jit(lambda s, b: dpo_train_step(s, b, model=model, tx=tx, cfg=cfg, accum_steps=2))
  batch = pairs()
  state, first = step(state, batch)
  np.testing.assert_allclose(first["loss"], np.log(2.0), rtol=1e-5)  # the policy starts as the reference
  for _ in range(20):
    state, metrics = step(state, batch)
  assert float(metrics["loss"]) < 0.5 and float(metrics["accuracy"]) == 1.0
  assert float(metrics["chosen_reward"]) > 0 > float(metrics["rejected_reward"])
  for a, b in zip(jax.tree.leaves(ref_before), jax.tree.leaves(state.ref)):
    np.testing.assert_array_equal(a, np.asarray(b))
  # The response sums cover exactly the 3 response tokens: a uniform model gives 3 log(1/V).
  uniform = jax.tree.map(jnp.zeros_like, params)
  chosen, _ = pair_logps(model, uniform, batch)
  np.testing.assert_allclose(chosen, np.full(8, 3 * np.log(1 / VOCAB)), rtol=1e-5)


def test_a_reference_free_loss_runs_no_reference_forward_pass_and_learns():
  model = Transformer(small_model(vocab_size=VOCAB, max_len=8))
  params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  tx = optax.adam(3e-3)
  # A reference of NaNs: any use of it would make the loss NaN.
  state = RLState(step=jnp.int32(0), policy=params, policy_opt=tx.init(params), value=None, value_opt=None,
                  ref=jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params), reward={},
                  kl=init_kl_controller(0.0), baseline=jnp.float32(0.0), rng=jax.random.key(1))
  cfg = ml_collections.ConfigDict(dict(beta=2.0, loss="simpo", label_smoothing=0.0, gamma=0.5,
                                       length_normalise=False))
  step = jax.jit(lambda s, b: dpo_train_step(s, b, model=model, tx=tx, cfg=cfg, accum_steps=1))
  batch = pairs()
  chosen, rejected = (np.asarray(x) / 3 for x in pair_logps(model, params, batch))  # 3 response tokens each
  state, first = step(state, batch)
  simpo = np.log1p(np.exp(-(2.0 * (chosen - rejected) - 0.5)))  # -log sigmoid(beta margin - gamma)
  np.testing.assert_allclose(first["loss"], np.mean(simpo), rtol=1e-5)
  for _ in range(20):
    state, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) < 0.5
  assert float(metrics["skipped_updates"]) == 0
  # The margins and implicit rewards are the policy's own: a reference pass would make them NaN.
  assert all(np.isfinite(float(metrics[k])) for k in ("margin", "chosen_reward", "rejected_reward"))


def test_soft_labels_give_each_pair_its_judges_flip_rate_in_conservative_dpo():
  """dpo.soft_labels: pair i's loss is conservative DPO's with epsilon = 1 - label_i (the same as
  the scalar label_smoothing when every label agrees); label 1 is plain DPO's."""
  from rlhf_jax.training.preference.dpo_steps import pair_loss  # pylint: disable=g-import-not-at-top
  model = Transformer(small_model(vocab_size=VOCAB, max_len=8))
  params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  policy = jax.tree.map(lambda p: p * 1.5, params)  # off the reference: margins not 0
  batch = dict(pairs(4), ref_chosen=jnp.zeros(4), ref_rejected=jnp.zeros(4))
  cfg = lambda **kw: ml_collections.ConfigDict({**dict(beta=0.1, loss="conservative", label_smoothing=0.0, gamma=1.0,
                                                       length_normalise=False, soft_labels=False), **kw})
  loss = lambda c, b: float(pair_loss(policy, b, model=model, cfg=c, normalizer=4.0)[0])
  labels = jnp.array([[1.0], [0.9], [0.7], [0.6]])
  soft = loss(cfg(soft_labels=True), dict(batch, label=labels))
  per_pair = [loss(cfg(label_smoothing=1.0 - float(l)), dict(batch, loss_mask=jnp.eye(4, dtype=jnp.int32)[i][:, None]))
              for i, l in enumerate(labels[:, 0])]
  np.testing.assert_allclose(soft, sum(per_pair), rtol=1e-5)
  np.testing.assert_allclose(loss(cfg(soft_labels=True), dict(batch, label=jnp.ones((4, 1)))),
                             loss(cfg(), batch), rtol=1e-6)
