"""Packed RL updates (training/rl/packing.py): trajectories placed by first-fit decreasing, and
losses, gradients, metrics and scores equal to the padded batch's for every policy loss and
aggregation, with every loss term on, a multi-turn trajectory's environment tokens (which no
update trains on) and rows dynamic sampling leaves out."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms import aggregation
from rlhf_jax.algorithms.aggregation import LOSS_AGGREGATIONS
from rlhf_jax.algorithms.policy_losses import POLICY_LOSSES
from rlhf_jax.models.transformer import attention_mask, positions_from_mask
from rlhf_jax.training.core.steps import accumulate_gradients
from rlhf_jax.training.rl import packing as packing_lib
from rlhf_jax.training.rl import rl_steps
from rlhf_jax.training.rl.rl_config import RLConfig, Rollout
from rlhf_jax.training.rl.rl_update import loss_of_outputs, minibatch_update, packed_gradients
from tests.training.rl.test_rl_steps import build, setup

P, T, N, VOCAB = 4, 8, 12, 16


def test_first_fit_decreasing_places_the_longest_first_in_the_first_row_with_room():
  row, offset, used = packing_lib.first_fit_decreasing(jnp.array([3, 7, 2, 5, 0]), 8)
  # 7 -> row 0; 5 -> row 1; 3 -> row 1 (fills it); 2 -> row 2; 0 fits row 0's end.
  np.testing.assert_array_equal(row, [1, 0, 2, 1, 0])
  np.testing.assert_array_equal(offset, [5, 0, 0, 0, 7])
  assert int(used) == 3


def test_pack_moves_each_span_whole_and_unpack_reads_its_response_back():
  tokens = jnp.arange(3 * 6).reshape(3, 6) + 1
  mask = jnp.array([[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0]])  # prompt 3, response 3
  packing = packing_lib.pack(tokens, mask, jnp.array([True, True, True]), 3, rows=1)
  # Spans 3, 6 and 3 tokens: the 6 fill row 0; rows 1 holds the other two.
  assert int(packing.count) == 2
  np.testing.assert_array_equal(packing.tokens[0, 0], tokens[1])
  np.testing.assert_array_equal(packing.tokens[1, 0], [2, 3, 4, 15, 16, 17])
  np.testing.assert_array_equal(packing.segments[1, 0], [1, 1, 1, 3, 3, 3])
  # An output per packed token (its id) comes back at its response column; elsewhere the base.
  base = -jnp.ones((3, 3), jnp.int32)
  got = [packing_lib.unpack(packing, j, packing.tokens[j][:, 1:], base, 3) for j in range(2)]
  np.testing.assert_array_equal(got[1], [[4, -1, -1], [-1, -1, -1], [16, 17, -1]])
  np.testing.assert_array_equal(got[0][1], tokens[1, 3:])


def toy_outputs(params, tokens, mask, segments=None, *, prompt_len: int):
  """`loss_outputs` of a one-layer toy model that attends within its sequence (causal, real
  keys, its own segment) at positions from the mask: what packing must keep."""
  allowed, _ = attention_mask(mask, None, segments)
  h = jnp.tanh(params["embed"][tokens] + params["pos"][positions_from_mask(mask, segments)])
  context = jnp.einsum("nqk,nk->nq", allowed[:, 0].astype(jnp.float32), h)[:, prompt_len - 1:-1]
  logprobs = -jax.nn.softplus(context + params["out"][tokens[:, prompt_len:]])
  return logprobs, jax.nn.sigmoid(context), params["value"] * context


def toy_batch():
  """A rollout of N rows of prompt P and response T: prompts of 1-4 tokens, responses of 0-8
  (one row with none), environment tokens (real, loss mask 0) inside two of them, one group
  left out by dynamic sampling, old log-probs off the new ones (ratios away from 1)."""
  rng = np.random.default_rng(0)
  prompt_lens, response_lens = rng.integers(1, P + 1, N), rng.integers(0, T + 1, N)
  response_lens[3] = 0
  cols = np.arange(P + T)
  mask = (cols >= P - prompt_lens[:, None]) & (cols < P + response_lens[:, None])
  loss_mask = mask[:, P:].copy()
  loss_mask[0, 1:3] = loss_mask[5, 2:4] = False  # an environment's observation
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  weights = jnp.asarray(np.arange(N) // 3 != 2, jnp.float32)
  batch = Rollout(jnp.asarray(rng.integers(0, VOCAB, (N, P + T)), jnp.int32), jnp.asarray(mask, jnp.int32),
                  -1.0 + 0.3 * normal(N, T), -1.0 + 0.3 * normal(N, T), normal(N, T), normal(N, T), normal(N, T),
                  weights, jnp.asarray(loss_mask, jnp.int32), jnp.exp(0.2 * normal(N, T)))
  params = {"embed": normal(VOCAB), "pos": normal(P + T), "out": normal(VOCAB), "value": jnp.float32(0.5)}
  return batch, params


@pytest.mark.parametrize("aggregation_name", list(LOSS_AGGREGATIONS))
def test_packed_gradients_equal_the_padded_minibatchs_for_every_policy_loss(aggregation_name):
  batch, params = toy_batch()
  response_mask = batch.loss_mask * batch.weights[:, None]
  weights = (aggregation.token_weights(response_mask, aggregation_name, T),
             aggregation.token_weights(response_mask, "token_mean"))
  for policy_loss in POLICY_LOSSES:
    # Every term: the policy loss, an entropy bonus, the KL as a loss term, the critic's value loss.
    cfg = RLConfig(max_new_tokens=T, stop_ids=(VOCAB - 1,), pad_id=0, advantage="gae", policy_loss=policy_loss,
                   loss_aggregation=aggregation_name, ent_coef=0.01, kl_in_loss=True)
    padded_loss = lambda p, b: loss_of_outputs(toy_outputs(p, b[0].tokens, b[0].mask, prompt_len=P), b, cfg=cfg,
                                               kl_coef=0.1)
    padded = jax.jit(lambda p, b: accumulate_gradients(padded_loss, p, b, 1))(params, (batch, weights))
    packed_fn = packed_gradients(functools.partial(toy_outputs, prompt_len=1), P, 2, cfg=cfg, kl_coef=0.1)
    packed = jax.jit(packed_fn)(params, (batch, weights))
    for got, want in zip(jax.tree.leaves(packed), jax.tree.leaves(padded)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=policy_loss)
    assert float(padded[1]["max_ratio_deviation"]) > 0.3 and float(padded[1]["clip_fraction"]) > 0.1


def test_an_update_weights_the_policys_tokens_alone():
  """A multi-turn trajectory's environment tokens are real (attended to) but never trained on."""
  batch, params = toy_batch()
  seen = {}

  def grad_fn(params, minibatch):
    seen["weights"] = minibatch[1]
    return jax.tree.map(jnp.zeros_like, params), {"loss": jnp.float32(0.0)}

  cfg = RLConfig(max_new_tokens=T, stop_ids=(VOCAB - 1,), pad_id=0)
  minibatch_update(((params,), (None,)), batch, grad_fn=grad_fn, cfg=cfg, txs=(None,), rewards_ok=True)
  trained = batch.loss_mask * batch.weights[:, None] > 0
  assert not np.array_equal(trained, batch.mask[:, P:] > 0)
  for weights in seen["weights"]:
    np.testing.assert_array_equal(weights > 0, trained)


def test_packed_scoring_gives_the_padded_scores():
  built = build(algo="ppo")  # a separate critic
  sampled = rl_steps.sample_rollout(built["state"], built["prompts"], jnp.ones_like(built["prompts"]),
                                    jax.random.key(0), **{k: built["parts"][k] for k in ("policy", "score_fn", "cfg")})
  lengths = np.asarray(sampled.response.mask.sum(1))
  assert lengths.min() < lengths.max()
  score = lambda cfg: jax.jit(functools.partial(rl_steps.score_tokens, policy=built["parts"]["policy"],
                                                critic=built["parts"]["critic"], cfg=cfg))(built["state"], sampled)
  cfg = built["parts"]["cfg"]
  padded, packed = score(cfg), score(dataclasses.replace(cfg, packing=True, pack_rows=3))
  valid = sampled.response.mask > 0
  for got, want in zip(packed[:3], padded[:3]):  # log-probs, the reference's, the critic's values (dense: no agreement)
    np.testing.assert_allclose(np.where(valid, got, 0), np.where(valid, want, 0), atol=2e-5)


def test_a_packed_ppo_iteration_gives_the_padded_one():
  """Two minibatches, four epochs of shuffles, a separate critic: the same params and metrics."""
  outputs = []
  for packing in (False, True):
    state, step, prompts = setup(algo="ppo", packing=packing, pack_rows=2)
    outputs.append(step(state, prompts, jnp.ones_like(prompts)))
  (padded_state, padded), (state, metrics) = outputs
  for key in ("policy_loss", "value_loss", "clip_fraction", "entropy", "kl", "max_ratio_deviation"):
    np.testing.assert_allclose(float(metrics[key]), float(padded[key]), rtol=1e-4, atol=1e-6, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), (state.policy, state.value),
               (padded_state.policy, padded_state.value))
