"""Compiled train step: gradient accumulation is exact, repeated steps fit a batch, a non-finite
update is refused, packed rows give the loss of one sequence per row."""

import functools

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from configs import common, dpo, rl, sft
from rlhf_jax import sharding, stages
from rlhf_jax.data import batches
from rlhf_jax.errors import UserError
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.core import setup
from rlhf_jax.training.core.optim import learning_rate_schedule, make_optimizer
from rlhf_jax.training.core.steps import eval_step, train_step
from tests.conftest import small_model
from tests.data.test_batches import TOK, sft_pairs


def make(accum_steps, inject_nan_at=()):
  optim = common.base_config("pretrain", "tiny").optim
  optim.accum_steps = accum_steps
  optim.warmup_steps = 0  # a warm-up's learning rate is 0 at step 0: the first update would change nothing
  model = Transformer(small_model())
  tx = make_optimizer(optim, 100)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
  state, _ = setup.init_state(model, tx, mesh, common.DEFAULT_RULES, seed=0)
  step = jax.jit(functools.partial(train_step, model=model, tx=tx, schedule=learning_rate_schedule(optim, 100),
                                   accum_steps=accum_steps, seed=0, inject_nan_at=inject_nan_at))
  return state, step


def batch(seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, 256, (8, 17)).astype(np.int32)
  loss_mask = (rng.random((8, 16)) < 0.6).astype(np.int32)  # uneven token counts per microbatch
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": np.ones((8, 16), np.int32),
          "loss_mask": loss_mask}


def test_gradient_accumulation_equals_the_full_batch():
  (state1, step1), (state4, step4) = make(1), make(4)
  initial = jax.device_get(state1.params)
  new1, metrics1 = step1(state1, batch())
  new4, metrics4 = step4(state4, batch())
  np.testing.assert_allclose(metrics4["loss"], metrics1["loss"], rtol=1e-5)
  np.testing.assert_allclose(metrics4["grad_norm"], metrics1["grad_norm"], rtol=1e-4)
  update = lambda params: [np.asarray(a, np.float64) - b for a, b in zip(jax.tree.leaves(params),
                                                                        jax.tree.leaves(initial))]
  update1, update4 = update(new1.params), update(new4.params)
  norm = lambda leaves: np.sqrt(sum(np.sum(np.square(x)) for x in leaves))
  assert norm(update1) > 1e-2  # the params moved: the comparison is of updates, not of the initial params
  # In the L2 norm over all params, as tests/mesh_check.py compares meshes: Adam's first step
  # moves each param by about lr x the sign of its gradient, so a gradient that cancels to ~0
  # flips sign on float noise alone (another summation order) and moves that one param the
  # other way by ~1e-6, while the update as a whole agrees to ~1e-6.
  assert norm([a - b for a, b in zip(update4, update1)]) < 1e-4 * norm(update1)
  assert int(new4.step) == 1


def test_repeated_steps_fit_one_batch():
  state, step = make(1)
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch())
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.7 * losses[0]


def test_a_non_finite_loss_leaves_params_and_optimizer_state_untouched():
  state, step = make(2, inject_nan_at=(2,))  # the second update's loss is NaN
  state, first = step(state, batch())
  before = jax.device_get((state.params, state.opt_state))
  state, second = step(state, batch())
  assert float(first["skipped_updates"]) == 0 and float(second["skipped_updates"]) == 1
  assert float(second["nonfinite_loss"]) == 1 and float(second["nonfinite_grads"]) == 1
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves((state.params, state.opt_state))):
    np.testing.assert_array_equal(a, np.asarray(b))
  assert int(state.step) == 2  # the batch is consumed all the same
  state, third = step(state, batch())
  assert float(third["skipped_updates"]) == 0 and np.isfinite(float(third["loss"]))


def test_packed_sft_rows_give_the_loss_of_one_sequence_per_row():
  for style in ({}, {"position": "rope", "tie_embeddings": False}):
    model = Transformer(small_model(**style))
    params = nn.meta.unbox(model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"])
    evaluate = jax.jit(functools.partial(eval_step, model=model))
    sums = []
    for pack in (False, True):
      data = batches.SFTData(sft_pairs(), TOK, seq_len=32, batch_size=4, seed=0, shuffle=False, pack=pack)
      totals = [jax.device_get(evaluate(params, batch)) for batch in batches.eval_batches(data, 100)]
      sums.append({k: sum(float(t[k]) for t in totals) for k in totals[0]})
    assert sums[0]["tokens"] == sums[1]["tokens"] and sums[0]["correct"] == sums[1]["correct"]
    np.testing.assert_allclose(sums[1]["nll"], sums[0]["nll"], rtol=1e-5)


def test_packing_is_refused_where_rows_are_prompts():
  config = rl.get_config("tiny")
  config.data.pack = True
  with pytest.raises(UserError, match="data.pack=True: packed rows are for the pretrain, sft, reward, dpo stages; "
                                      "the rl stage"):
    stages.check_all(config)


@pytest.mark.parametrize("stage,pack", [("sft", True), ("dpo", False)])
def test_a_shared_prompt_is_refused_outside_packed_preference_rows(stage, pack):
  config = {"sft": sft, "dpo": dpo}[stage].get_config("tiny")
  config.data.update(pack=pack, share_prompt=True)
  with pytest.raises(UserError, match=f"data.share_prompt=True: .* reward and dpo stages .*stage={stage}"):
    stages.check_all(config)
