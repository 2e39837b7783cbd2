"""The compiled RL iteration of every algorithm: raises a programmatic reward, leaves frozen
params untouched, recomputes the sampler's log-probs at its temperature, updates at ratio 1
where it must, penalises responses without EOS, and drops uninformative groups."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax.algorithms import presets
from rlhf_jax.algorithms.kl import init_kl_controller
from rlhf_jax.models.sampling import SampleOutput, SamplingParams, sample
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.core.logprobs import response_logprobs
from rlhf_jax.training.rl.rl_state import RLState
from rlhf_jax.training.rl import rl_steps
from rlhf_jax.training.rl.rl_steps import RLConfig, in_chunks, rl_iteration, rollout
from tests.conftest import small_model

VOCAB, EOS, PAD, TARGET = 16, 15, 14, 3


def init(model, seed):
  return nn.meta.unbox(model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"])


def build(lr=3e-3, algo="ppo", shared_critic=False, score_fn=None, **cfg_overrides) -> dict:
  """A small policy, a critic as `algo` and `shared_critic` say, a state, the iteration's parts
  and 32 responses' prompts."""
  tx = lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr, eps=1e-5))
  policy = Transformer(small_model(vocab_size=VOCAB, heads=("value",) if shared_critic else ()))
  separate = algo == "ppo" and not shared_critic
  critic = Transformer(small_model(vocab_size=VOCAB, heads=("value",))) if separate else None
  policy_tx, value_tx = tx(), (tx() if critic else None)
  params, value_params = init(policy, 0), (init(critic, 1) if critic else None)
  reward_params = {"w": jnp.arange(3.0)}  # stands in for a frozen reward model
  state = RLState(step=jnp.int32(0), policy=params, policy_opt=policy_tx.init(params), value=value_params,
                  value_opt=value_tx.init(value_params) if value_tx else None, ref=jax.tree.map(jnp.copy, params),
                  reward=reward_params, kl=init_kl_controller(0.01), baseline=jnp.float32(0.0),
                  rng=jax.random.key(2))
  fields = presets.resolve(algo, {"minibatches": 2 if algo == "ppo" else 1, "temperature": 1.0,
                                  "penalise_no_eos": False, "stop_ids": (EOS,), **cfg_overrides})
  cfg = RLConfig(max_new_tokens=8, pad_id=PAD, algo=algo, **fields)
  target_fraction = lambda state, tokens, mask, out: jnp.sum((out.tokens == TARGET) * out.mask, 1) / jnp.maximum(
      jnp.sum(out.mask, 1), 1)
  parts = dict(policy=policy, critic=critic, score_fn=score_fn or target_fraction, cfg=cfg)
  prompts = jnp.asarray(np.random.default_rng(0).integers(0, 13, (32 // cfg.samples_per_prompt, 4)), jnp.int32)
  return dict(state=state, prompts=prompts, parts=parts, txs=dict(policy_tx=policy_tx, value_tx=value_tx))


def setup(lr=3e-3, algo="ppo", shared_critic=False, score_fn=None, **cfg_overrides):
  """(state, jitted iteration, prompts) of `build`."""
  built = build(lr, algo, shared_critic, score_fn, **cfg_overrides)
  step = jax.jit(functools.partial(rl_iteration, **built["parts"], **built["txs"]))
  return built["state"], step, built["prompts"]


@pytest.mark.parametrize("algo,shared_critic", [("ppo", False), ("ppo", True), ("reinforce", False),
                                                ("rloo", False), ("grpo", False), ("remax", False),
                                                ("dr_grpo", False), ("dapo", False), ("gspo", False),
                                                ("cispo", False), ("reinforce_pp", False)])
def test_each_algorithm_raises_a_programmatic_reward(algo, shared_critic):
  state, step, prompts = setup(algo=algo, shared_critic=shared_critic)
  scores, clipped = [], []
  for _ in range(15):
    state, metrics = step(state, prompts, jnp.ones_like(prompts))
    scores.append(float(metrics["score"]))
    clipped.append(float(metrics["clip_fraction"]))
  assert np.mean(scores[-3:]) > np.mean(scores[:3]) + 0.2, scores
  assert float(metrics["kl"]) > 0
  if algo == "ppo":  # 4 epochs x 2 minibatches: later updates move the ratio past the clip
    assert 0 < max(clipped) < 0.5, clipped
  else:  # one update per batch (the test's minibatches=1), at ratio 1: never clipped
    assert max(clipped) == 0.0 and abs(float(metrics["ratio"]) - 1) < 1e-5
  # At the first update of each iteration the ratio is 1 but for float rounding (the update's
  # forward pass sees the rows in another order than the rollout's).
  assert float(metrics["max_ratio_deviation"]) < 1e-4
  assert int(state.step) == 15
  assert ("explained_variance" in metrics) == (algo == "ppo")


def test_grpo_with_the_kl_as_a_loss_term_and_a_rollout_correction():
  state, step, prompts = setup(algo="grpo", kl_in_loss=True, rollout_correction="token_tis")
  for _ in range(3):
    state, metrics = step(state, prompts, jnp.ones_like(prompts))
  # The reward carries no KL penalty then; the k3 term is in the loss instead.
  assert float(metrics["non_score_reward"]) == 0.0 and float(metrics["kl_loss"]) > 0
  # Our own engine: the sampler's log-probs are the trainer's, so the correction changes nothing.
  assert float(metrics["rollout/logprob_gap_max"]) < 1e-4 and abs(float(metrics["rollout/ess"]) - 1) < 1e-6
  assert float(metrics["rollout/kl"]) < 1e-8 and float(metrics["rollout/corrected_fraction"]) == 0.0


def test_reinforce_baseline_tracks_the_mean_return():
  state, step, prompts = setup(algo="reinforce", baseline_decay=0.5)
  state, metrics = step(state, prompts, jnp.ones_like(prompts))
  # From 0, one update of the moving average: 0.5 * 0 + 0.5 * mean(score - kl penalty).
  np.testing.assert_allclose(state.baseline, 0.5 * (metrics["score"] + metrics["non_score_reward"]), rtol=1e-5)


def test_frozen_params_are_bit_identical_after_updates():
  state, step, prompts = setup()
  ref_before, reward_before = jax.device_get(state.ref), jax.device_get(state.reward)
  policy_before = jax.device_get(state.policy)
  for _ in range(2):
    state, _ = step(state, prompts, jnp.ones_like(prompts))
  for before, after in ((ref_before, state.ref), (reward_before, state.reward)):
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
      np.testing.assert_array_equal(a, np.asarray(b))
  changed = [not np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(policy_before),
                                                                   jax.tree.leaves(state.policy))]
  assert all(changed)


def test_adaptive_kl_coefficient_moves_toward_the_target():
  state, step, prompts = setup(adaptive_kl=True, kl_target=1e-6, kl_horizon=100.0)
  coefs = []
  for _ in range(3):
    state, metrics = step(state, prompts, jnp.ones_like(prompts))
    coefs.append(float(state.kl.coef))
  # Iteration 1 samples from the reference itself: KL 0 < target, so the coefficient shrinks
  # by the clipped error (1 - 0.2 * 32 / 100); after that KL > target and it grows.
  np.testing.assert_allclose(coefs[0], 0.01 * (1 - 0.2 * 32 / 100), rtol=1e-5)
  assert coefs[2] > coefs[1] > coefs[0]


def test_gradient_accumulation_matches_whole_minibatches():
  # Same rollout, same shuffles: 2 microbatches per minibatch give the same update, because
  # each microbatch loss is weighted by its share of the minibatch's response tokens.
  results = []
  for accum_steps in (1, 2):
    state, step, prompts = setup(accum_steps=accum_steps)
    state, metrics = step(state, prompts, jnp.ones_like(prompts))
    results.append((jax.device_get(state.policy), jax.device_get(state.value), jax.device_get(metrics)))
  (policy_a, value_a, metrics_a), (policy_b, value_b, metrics_b) = results
  for a, b in zip(jax.tree.leaves((policy_a, value_a)), jax.tree.leaves((policy_b, value_b))):
    np.testing.assert_allclose(a, b, atol=2e-5)
  for key in ("policy_loss", "value_loss", "clip_fraction", "entropy"):
    np.testing.assert_allclose(metrics_a[key], metrics_b[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("algo,shared_critic,kl_in_loss", [("ppo", False, False), ("ppo", True, False),
                                                           ("grpo", False, True)])
def test_the_first_update_from_the_scoring_pass_equals_one_with_its_own_forward_pass(algo, shared_critic, kl_in_loss):
  # One minibatch: the first update differentiates the scoring pass (jax.vjp). Two iterations
  # (PPO: 4 epochs each; GRPO: its KL as a loss term) give the params and metrics of the
  # separate forward pass, up to float rounding (Adam rescales the tiny differences).
  results = []
  for reuse in (False, True):
    state, step, prompts = setup(algo=algo, shared_critic=shared_critic, minibatches=1, kl_in_loss=kl_in_loss,
                                 reuse_scoring_pass=reuse)
    for _ in range(2):
      state, metrics = step(state, prompts, jnp.ones_like(prompts))
    results.append((jax.device_get((state.policy, state.value)), jax.device_get(metrics)))
  (params_a, metrics_a), (params_b, metrics_b) = results
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_allclose(a, b, atol=1e-4)
  assert metrics_a.keys() == metrics_b.keys()
  for key in ("policy_loss", "entropy", "kl", *(("value_loss",) if algo == "ppo" else ("kl_loss",))):
    np.testing.assert_allclose(metrics_a[key], metrics_b[key], rtol=1e-4, atol=1e-6)
  # The first update's ratio: 1 up to float error from a forward pass of its own, exactly 1 from the scoring pass.
  assert metrics_a["max_ratio_deviation"] < 1e-5 and metrics_b["max_ratio_deviation"] == 0.0


def test_scoring_in_chunks_gives_the_whole_batch_result():
  """Rollout scoring runs minibatch-sized chunks one after another; the rows come back in order."""
  rows = (jnp.arange(24.0).reshape(12, 2), jnp.arange(12))
  fn = lambda x, i: (x.sum(1) * i, x[:, ::-1])
  whole = fn(*rows)
  for chunks in (1, 3, 4):
    for got, want in zip(in_chunks(fn, rows, chunks), whole):
      np.testing.assert_array_equal(got, want)


def test_non_finite_rewards_skip_every_update_of_the_iteration():
  state, step, prompts = setup(inject_nan_at=(1,))  # the first iteration's scores are NaN
  before = jax.device_get((state.policy, state.policy_opt, state.value, state.kl, state.baseline))
  state, metrics = step(state, prompts, jnp.ones_like(prompts))
  after = (state.policy, state.policy_opt, state.value, state.kl, state.baseline)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, np.asarray(b))
  assert float(metrics["nonfinite_rewards"]) == 1
  assert float(metrics["skipped_updates"]) == 4 * 2  # epochs x minibatches
  state, metrics = step(state, prompts, jnp.ones_like(prompts))
  assert float(metrics["skipped_updates"]) == 0 and int(state.step) == 2


def test_at_temperature_0_7_the_trainer_recomputes_the_samplers_log_probs():
  built = build(temperature=0.7)
  state, prompts, parts = built["state"], built["prompts"], built["parts"]
  rng = jax.random.key(5)
  batch, _, _ = jax.jit(functools.partial(rollout, **parts))(state, prompts, jnp.ones_like(prompts), rng)
  out = sample(parts["policy"], state.policy, prompts, jnp.ones_like(prompts), rng, SamplingParams.make(0.7),
               max_new_tokens=8, stop_ids=(EOS,), pad_id=PAD)
  np.testing.assert_array_equal(batch.tokens[:, 4:], out.tokens)  # the same responses
  real = np.asarray(out.mask) > 0
  assert real.sum() > 100
  np.testing.assert_allclose(np.asarray(batch.logprobs)[real], np.asarray(out.logprobs)[real], atol=2e-5)
  # Before any update the policy is the reference: the same log-probs, a KL of 0.
  np.testing.assert_allclose(np.asarray(batch.ref_logprobs)[real], np.asarray(batch.logprobs)[real], atol=1e-6)
  # Recomputed at 1.0 the same tokens have other log-probs: the match depends on the temperature.
  at_1 = response_logprobs(parts["policy"], state.policy, batch.tokens, batch.mask, 4, 1.0)
  assert np.abs(np.asarray(at_1)[real] - np.asarray(out.logprobs)[real]).max() > 1e-2


def test_one_update_at_0_7_has_ratio_1_and_with_eos_unreachable_every_score_is_the_penalty():
  # One epoch of one minibatch: the rollout's log-probs come from the params being updated, so
  # at the update the ratio is 1 on every token, approx-KL is 0 and nothing is clipped.
  state, step, prompts = setup(temperature=0.7, epochs=1, minibatches=1, stop_ids=(VOCAB + 1,), penalise_no_eos=True,
                               no_eos_penalty=-1.5)
  for _ in range(2):
    state, metrics = step(state, prompts, jnp.ones_like(prompts))
    assert abs(float(metrics["ratio"]) - 1.0) < 1e-5
    assert float(metrics["approx_kl"]) < 1e-9 and float(metrics["clip_fraction"]) == 0.0
    # No response can end: each gets the penalty, whatever the reward (a fraction in [0, 1]).
    assert float(metrics["no_eos_fraction"]) == 1.0 and float(metrics["score"]) == -1.5
    assert float(metrics["response_length"]) == 8


def test_dynamic_sampling_leaves_out_groups_whose_scores_are_all_equal():
  # A constant score: every group is uninformative, so no token carries a gradient.
  state, step, prompts = setup(algo="dapo", score_fn=lambda state, tokens, mask, out: jnp.zeros(tokens.shape[0]))
  before = jax.device_get(state.policy)
  state, metrics = step(state, prompts, jnp.ones_like(prompts))
  assert float(metrics["uninformative_fraction"]) == 1.0
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.policy)):
    np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.parametrize("algo", ["grpo", "rloo", "dr_grpo"])
def test_every_group_method_logs_the_groups_that_teach_nothing(algo):
  # No dynamic sampling, so every group is trained on; the metric still says how many agree
  # (a GRPO run whose groups all agree learns nothing, and said 0 here before).
  k = presets.resolve(algo, {})["samples_per_prompt"]

  def score_fn(state, tokens, mask, out):  # a prompt starting with an even token: 1 for its first sample
    return jnp.where(tokens[:, 0] % 2 == 0, jnp.arange(tokens.shape[0]) % k == 0, 0).astype(jnp.float32)
  built = build(algo=algo, score_fn=score_fn)
  prompts = built["prompts"]
  _, _, metrics = jax.jit(functools.partial(rollout, **built["parts"]))(
      built["state"], prompts, jnp.ones_like(prompts), jax.random.key(0))
  expected = np.mean(np.asarray(prompts[:, 0]) % 2 == 1)
  assert 0 < expected < 1
  assert float(metrics["uninformative_fraction"]) == pytest.approx(expected)


def test_oversampling_refills_the_batch_with_informative_groups_in_draw_order():
  k = presets.resolve("dapo", {})["samples_per_prompt"]

  def score_fn(state, tokens, mask, out):  # a prompt starting with an even token: 1 for its first sample
    return jnp.where(tokens[:, 0] % 2 == 0, jnp.arange(tokens.shape[0]) % k == 0, 0).astype(jnp.float32)
  built = build(algo="dapo", score_fn=score_fn, oversample=2)
  groups = 32 // k
  first = jnp.asarray([1, 2, 3] + [2 * i for i in range(2, groups + 1)], jnp.int32)  # odd: uninformative
  prompts = jnp.concatenate([first[:, None], built["prompts"][:1].repeat(groups + 2, 0)[:, 1:]], 1)
  batch, _, metrics = jax.jit(functools.partial(rollout, **built["parts"]))(
      built["state"], prompts, jnp.ones_like(prompts), jax.random.key(0))
  assert batch.tokens.shape[0] == 32  # the static batch: 2 of the groups + 2 drawn are left out
  kept = np.asarray(batch.tokens[::k, 0])
  np.testing.assert_array_equal(kept, [f for f in np.asarray(first) if f % 2 == 0])
  np.testing.assert_array_equal(np.asarray(batch.tokens[:, 0]), np.repeat(kept, k))
  assert float(metrics["uninformative_fraction"]) == pytest.approx(2 / (groups + 2))
  assert float(metrics["kept_uninformative_fraction"]) == 0.0 and float(jnp.min(batch.weights)) == 1.0


def test_continuous_batching_gives_the_static_iterations_rollout_and_update(algo="grpo"):
  """sample.batching=continuous draws the same responses (each its own key), so the iteration's
  update is the static one's to float rounding; the sampler/trainer check still holds. (The
  paged cache draws the static tokens too: tests/models/test_paged.py.)"""
  outputs = []
  for batching in ("static", "continuous"):  # 5 slots for 32 responses
    state, step, prompts = setup(algo=algo, batching=batching, slots=5)
    outputs.append(step(state, prompts, jnp.ones_like(prompts)))
  (static_state, static), *others = outputs
  for state, metrics in others:
    assert float(metrics["max_ratio_deviation"]) < 1e-4
    for key in ("score", "kl", "response_length", "policy_loss"):
      np.testing.assert_allclose(float(metrics[key]), float(static[key]), rtol=1e-4, atol=1e-6, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), state.policy, static_state.policy)


def test_a_response_ending_on_any_stop_id_is_ended_and_escapes_the_no_eos_penalty():
  """Gemma 3 IT's chat turns end with <end_of_turn> (106), its EOS is <eos> (1): with both as
  stop ids a response ending on 106 has ended; one ending on neither gets the penalty."""
  gemma = RLConfig(max_new_tokens=4, stop_ids=(1, 106), pad_id=0, no_eos_penalty=-5.0)
  tokens = jnp.array([[7, 8, 106, 0], [7, 1, 0, 0], [7, 8, 9, 5], [7, 8, 0, 0]])
  mask = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]])  # row 3's pad is 0, not a stop id
  out = SampleOutput(tokens, jnp.zeros(tokens.shape), mask)
  prompts = jnp.ones((4, 2), jnp.int32)
  sampled = rl_steps.sampled_of(None, prompts, prompts, out, score_fn=None, cfg=gemma)
  assert sampled.ended.tolist() == [True, True, False, False]
  assert rl_steps.total_scores(gemma, sampled, jnp.full(4, 2.0)).tolist() == [2.0, 2.0, -5.0, -5.0]
  eos_only = rl_steps.sampled_of(None, prompts, prompts, out, score_fn=None, cfg=RLConfig(4, stop_ids=(1,), pad_id=0))
  assert eos_only.ended.tolist() == [False, True, False, False]  # what Gemma 3's rollouts were scored by
