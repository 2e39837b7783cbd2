"""An MoE policy's or reward model's load-balancing loss in the preference stages: DPO and reward
training add router_aux_coef times it (`moe.load_balancing_loss` of the trained model's own pass
over chosen and rejected, as SFT and TRL's DPOTrainer do) and log it; evaluation, a dense model
and router_aux_coef = 0 add nothing."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import common
from rlhf_jax import sharding
from rlhf_jax.algorithms.kl import init_kl_controller
from rlhf_jax.models import moe
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.core import setup
from rlhf_jax.training.core.state import TrainState
from rlhf_jax.training.preference import dpo_steps, reward_steps
from rlhf_jax.training.rl.rl_state import RLState
from tests.conftest import LLAMA, small_model
from tests.training.preference.test_dpo_steps import pairs as dpo_pairs
from tests.training.preference.test_pairs import both_layouts
from tests.training.preference.test_reward_steps import synthetic_pairs

COEF = 0.5  # large, so the aux term is far above float32 noise in the loss
DPO_CFG = ml_collections.ConfigDict(dict(beta=0.1, loss="sigmoid", label_smoothing=0.0, gamma=1.0,
                                         length_normalise=False))
MOE = dict(n_experts=4, experts_per_token=2, d_expert=32)


def model_of(coef: float, experts: bool = True, **overrides) -> Transformer:
  return Transformer(small_model(**{**LLAMA, **(MOE if experts else {}), **overrides}, router_aux_coef=coef))


def with_coef(model: Transformer, coef: float) -> Transformer:
  return Transformer(dataclasses.replace(model.cfg, router_aux_coef=coef))


def params_of(model: Transformer):
  return nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])


def direct_aux(model, params, tokens, mask) -> float:
  """The load-balancing loss of one full forward pass, from models/moe.py alone."""
  return float(moe.load_balancing_loss(model.apply({"params": params}, tokens, mask).router, mask))


def both(batch, name):
  return jnp.concatenate([batch[name], batch[name.replace("chosen", "rejected")]])


def dpo_state(params, tx):
  # The reference routes otherwise than the policy: its pass, if it counted, would change the aux loss.
  return RLState(step=jnp.int32(0), policy=params, policy_opt=tx.init(params), value=None, value_opt=None,
                 ref=jax.tree.map(lambda p: p * 0.9, params), reward={}, kl=init_kl_controller(0.0),
                 baseline=jnp.float32(0.0), rng=jax.random.key(1))


def dpo_first_step(model, params, batch, accum_steps):
  tx = optax.adam(1e-3)
  step = jax.jit(functools.partial(dpo_steps.dpo_train_step, model=model, tx=tx, cfg=DPO_CFG, accum_steps=accum_steps))
  return jax.device_get(step(dpo_state(params, tx), batch)[1])


@pytest.mark.parametrize("accum_steps", [1, 2])
def test_dpo_adds_coef_times_the_policys_load_balancing_loss_and_logs_it(accum_steps):
  model = model_of(COEF, vocab_size=16, max_len=8)
  params, batch = params_of(model), dpo_pairs()
  with_aux = dpo_first_step(model, params, batch, accum_steps)
  without = dpo_first_step(with_coef(model, 0.0), params, batch, accum_steps)
  # Each microbatch's pass (its chosen and rejected rows), weighted by its share of the pairs.
  halves = np.array_split(np.arange(8), accum_steps)
  aux = np.mean([direct_aux(model, params, both({k: v[h] for k, v in batch.items()}, "chosen"),
                            both({k: v[h] for k, v in batch.items()}, "chosen_mask")) for h in halves])
  assert 1.5 < aux < 8  # E * sum_e f_e P_e: k (2) balanced, at most E * k (8)
  np.testing.assert_allclose(with_aux["router_aux_loss"], aux, rtol=1e-5)
  np.testing.assert_allclose(with_aux["loss"], without["loss"] + COEF * aux, rtol=1e-5)
  assert "router_aux_loss" not in without  # router_aux_coef = 0: nothing computed or logged
  for key in ("accuracy", "margin", "chosen_reward"):
    np.testing.assert_array_equal(with_aux[key], without[key])


def test_dpo_eval_adds_no_load_balancing_loss():
  model = model_of(COEF, vocab_size=16, max_len=8)
  params = params_of(model)
  state = dpo_state(params, optax.adam(1e-3))
  sums = [dpo_steps.dpo_eval_step(state, dpo_pairs(), model=m, cfg=DPO_CFG) for m in (model, with_coef(model, 0.0))]
  assert "router_aux_loss" not in sums[0]
  np.testing.assert_array_equal(sums[0]["nll"], sums[1]["nll"])


def reward_first_step(model, batch):
  tx = optax.adam(1e-3)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
  state, _ = setup.init_state(model, tx, mesh, common.DEFAULT_RULES, seed=0)
  step = jax.jit(functools.partial(reward_steps.reward_train_step, model=model, tx=tx, schedule=lambda s: 1e-3,
                                   accum_steps=1))
  return state.params, jax.device_get(step(state, batch)[1])


def test_reward_training_adds_coef_times_the_load_balancing_loss_of_every_token_and_logs_it():
  model = model_of(COEF, vocab_size=16, heads=("reward",))
  batch = {k: jnp.asarray(v) for k, v in synthetic_pairs(np.random.default_rng(0), 16).items()}
  params, with_aux = reward_first_step(model, batch)
  _, without = reward_first_step(with_coef(model, 0.0), batch)
  # Every block over every real token, the last one's too (reward_steps.scores_at says why).
  aux = direct_aux(model, params, both(batch, "chosen"), both(batch, "chosen_mask"))
  assert 1.5 < aux < 8
  np.testing.assert_allclose(with_aux["router_aux_loss"], aux, rtol=1e-5)
  # The scores come from the full pass here and the last-token pass without: equal up to rounding.
  np.testing.assert_allclose(with_aux["loss"], without["loss"] + COEF * aux, rtol=1e-5)
  np.testing.assert_allclose(with_aux["accuracy"], without["accuracy"])
  assert "router_aux_loss" not in without


def test_the_full_routing_pass_scores_as_the_last_token_pass():
  model = model_of(COEF, heads=("reward",), vocab_size=259, position="rope")
  params = params_of(model)
  for batch in both_layouts():
    fast, full = (reward_steps.pair_scores(params, batch, model=model, full_routing=f) for f in (False, True))
    for side in range(2):
      np.testing.assert_allclose(full[side], fast[side], rtol=1e-5, atol=1e-6)
    # The default's last layer routes the scored tokens alone; the full pass's every token (mask [rows, time]).
    assert fast[2][-1].logits.shape[1] < full[2][-1].logits.shape[1] == full[3].shape[1]


def test_packed_pairs_balance_over_the_same_real_tokens_as_one_pair_per_row():
  """data.pack: the aux loss averages over the real tokens alone, so packing leaves it as it was."""
  dpo_model, reward_model = (model_of(COEF, heads=h, vocab_size=259, position="rope") for h in ((), ("reward",)))
  params = params_of(reward_model)  # the reward head is the only difference; the DPO model ignores it
  one, packed = both_layouts()
  with_ref = lambda b: {**b, **{k: jnp.zeros(b["loss_mask"].size) for k in ("ref_chosen", "ref_rejected")}}
  losses = {
      "dpo": lambda b: dpo_steps.pair_loss(params, with_ref(b), model=dpo_model, cfg=DPO_CFG, normalizer=12.0,
                                           router_aux=True)[1],
      "reward": lambda b: reward_steps.pair_loss(params, b, 12.0, model=reward_model, router_aux=True)[1]}
  for name, sums_of in losses.items():
    aux = [float(sums_of(b)["router_aux_loss"]) for b in (one, packed)]
    assert 1.5 < aux[0] < 8, name
    np.testing.assert_allclose(aux[1], aux[0], rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("stage", ["dpo", "reward"])
def test_a_dense_model_traces_the_same_step_whatever_its_router_aux_coef(stage):
  """No MoE, no aux loss: a dense model's compiled step is today's, router_aux_coef never read."""
  model = model_of(0.0, experts=False, vocab_size=16, max_len=16, heads=("reward",) if stage == "reward" else ())
  params, tx = params_of(model), optax.adam(1e-3)
  if stage == "dpo":
    batch, state = dpo_pairs(), dpo_state(params, tx)
    trace = lambda m: jax.make_jaxpr(functools.partial(dpo_steps.dpo_train_step, model=m, tx=tx, cfg=DPO_CFG,
                                                       accum_steps=2))(state, batch)
  else:
    batch = {k: jnp.asarray(v) for k, v in synthetic_pairs(np.random.default_rng(0), 8).items()}
    state = TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params), frozen=None)
    trace = lambda m: jax.make_jaxpr(functools.partial(reward_steps.reward_train_step, model=m, tx=tx,
                                                       schedule=lambda s: 1e-3, accum_steps=1))(state, batch)
  assert str(trace(model)) == str(trace(with_coef(model, COEF)))
