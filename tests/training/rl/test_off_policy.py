"""Off-policy RL (training/rl/off_policy.py): K = 1 is the synchronous steps with the older params,
the sampler and the trainer agree on log-probs, and the importance corrections are as written.
Killed and resumed, an off-policy run goes on bit for bit: tests/test_faults.py (`ppo_async`)."""

import json
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlhf_jax.algorithms.importance import importance_weights
from rlhf_jax.training.rl import off_policy, rl_steps
from tests.test_main import ROOT
from tests.test_sharding import EIGHT_DEVICES
from tests.training.rl.test_rl_steps import TARGET, build


def replicated_shardings(tree):
  mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
  return mesh, jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), tree)


def batches(prompts, n: int) -> list:
  """n different prompt batches of the same shape."""
  return [{"tokens": (prompts + j) % 13, "mask": jnp.ones_like(prompts)} for j in range(n)]


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_one_step_behind_is_the_synchronous_steps_with_the_older_params(algo):
  built = build(algo=algo, off_policy_steps=1, is_correction="tis")
  parts, txs, state = built["parts"], built["txs"], built["state"]
  b0, b1, b2 = batches(built["prompts"], 3)
  sample = jax.jit(lambda s, p, m: off_policy.sample_in_flight(s, p, m, policy=parts["policy"],
                                                               score_fn=parts["score_fn"], cfg=parts["cfg"]))
  update = jax.jit(lambda s, sampled: rl_steps.update_phase(s, sampled, policy=parts["policy"],
                                                             critic=parts["critic"], cfg=parts["cfg"], **txs))
  # By hand: batch 0 drawn by the initial policy; iteration i samples batch i + 1 with the
  # params it starts from and trains on batch i.
  drawn0 = sample(state.replace(rng=off_policy.prefill_key(state.rng, 0)), b0["tokens"], b0["mask"])
  drawn1 = sample(state, b1["tokens"], b1["mask"])
  state1, metrics1 = update(state, drawn0.sampled)
  drawn2 = sample(state1, b2["tokens"], b2["mask"])
  state2, metrics2 = update(state1, drawn1.sampled)

  mesh, shardings = replicated_shardings(state)
  models = types.SimpleNamespace(policy=parts["policy"], critic=parts["critic"])
  driver, queued, _ = off_policy.compile_off_policy(state, shardings, mesh, mesh, (), models, txs["policy_tx"],
                                                    txs["value_tx"], parts["score_fn"], parts["cfg"],
                                                    (b0["tokens"], b0["mask"]))
  queued = driver.prefill(queued, [b0])
  queued, first = driver(queued, b1)
  queued, second = driver(queued, b2)
  for got, want in ((queued.policy, state2.policy), (queued.value, state2.value),
                    (queued.pending.sampled.tokens[0], drawn2.sampled.tokens)):
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
  for got, want in ((first, metrics1), (second, metrics2)):
    np.testing.assert_allclose(got["kl"], want["kl"], rtol=1e-6)
  # One model samples and trains: its two log-prob paths agree; the older params show in the
  # weights of the second update (sampled before the first), not in the first's.
  assert second["rl/staleness"] < 1e-4 and second["is_weight_max"] > 1.0 + 1e-4
  np.testing.assert_allclose(first["is_weight_mean"], 1.0, atol=1e-4)
  assert {"time/rollout", "time/update"} <= set(second)


def test_two_steps_behind_trains_on_the_oldest_rollout_of_the_queue():
  # Issue 38: at K = 1 the oldest and newest rollouts in flight are the same one, so a queue
  # that trained on the wrong end passed the test above; at K = 2 it does not.
  built = build(algo="grpo", off_policy_steps=2, is_correction="tis")
  parts, txs, state = built["parts"], built["txs"], built["state"]
  b = batches(built["prompts"], 5)
  sample = jax.jit(lambda s, p, m: off_policy.sample_in_flight(s, p, m, policy=parts["policy"],
                                                               score_fn=parts["score_fn"], cfg=parts["cfg"]))
  update = jax.jit(lambda s, sampled: rl_steps.update_phase(s, sampled, policy=parts["policy"],
                                                             critic=parts["critic"], cfg=parts["cfg"], **txs))
  # By hand: batches 0 and 1 drawn by the initial policy; iteration i samples batch i + 1 with
  # the params it starts from and trains on batch i - 1's rollout, two iterations old.
  drawn = [sample(state.replace(rng=off_policy.prefill_key(state.rng, j)), b[j]["tokens"], b[j]["mask"])
           for j in range(2)]
  states = [state]
  for i in range(3):
    drawn.append(sample(states[-1], b[i + 2]["tokens"], b[i + 2]["mask"]))
    states.append(update(states[-1], drawn[i].sampled)[0])

  mesh, shardings = replicated_shardings(state)
  models = types.SimpleNamespace(policy=parts["policy"], critic=parts["critic"])
  driver, queued, _ = off_policy.compile_off_policy(state, shardings, mesh, mesh, (), models, txs["policy_tx"],
                                                    txs["value_tx"], parts["score_fn"], parts["cfg"],
                                                    (b[0]["tokens"], b[0]["mask"]))
  queued = driver.prefill(queued, b[:2])
  for i in range(3):
    queued, _ = driver(queued, b[i + 2])
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(queued.policy), jax.tree.leaves(states[-1].policy)))
  for slot, j in ((0, 3), (1, 4)):  # oldest first
    np.testing.assert_array_equal(queued.pending.sampled.tokens[slot], drawn[j].sampled.tokens)


def test_host_rewards_score_each_rollout_as_it_is_drawn_and_ride_the_queue_to_its_update():
  """K = 2 with a host reward: each rollout's host scores are computed once, when it is drawn
  (for its own prompts' ids), and its update, two iterations later, trains on them."""
  no_model = lambda state, tokens, mask, out: jnp.zeros(tokens.shape[0])
  built = build(algo="grpo", off_policy_steps=2, score_fn=no_model, host_rewards=("targets",), model_weight=None)
  parts, txs, state = built["parts"], built["txs"], built["state"]
  b = [{**batch, "ids": np.arange(4) + 10 * j} for j, batch in enumerate(batches(built["prompts"], 5))]
  scored_ids = []

  def score(sampled, ids):  # the fraction of TARGET tokens, on the host, plus the batch's own tag
    scored_ids.append([int(i) for i in ids])
    tokens, mask = np.asarray(sampled.response.tokens), np.asarray(sampled.response.mask)
    total = ((tokens == TARGET) * mask).sum(1) / np.maximum(mask.sum(1), 1) + ids[0] / 10
    return rl_steps.HostScores(jnp.asarray(total, jnp.float32), jnp.asarray(total[:, None], jnp.float32))

  sample = jax.jit(lambda s, p, m: off_policy.sample_in_flight(s, p, m, policy=parts["policy"],
                                                               score_fn=parts["score_fn"], cfg=parts["cfg"]))
  update = jax.jit(lambda s, sampled, host: rl_steps.update_phase(s, sampled, host, policy=parts["policy"],
                                                                   critic=parts["critic"], cfg=parts["cfg"], **txs))
  drawn = [sample(state.replace(rng=off_policy.prefill_key(state.rng, j)), b[j]["tokens"], b[j]["mask"])
           for j in range(2)]
  states, by_hand = [state], []
  for i in range(3):
    drawn.append(sample(states[-1], b[i + 2]["tokens"], b[i + 2]["mask"]))
    new_state, metrics = update(states[-1], drawn[i].sampled, score(drawn[i].sampled, b[i]["ids"]))
    states.append(new_state)
    by_hand.append(metrics)

  mesh, shardings = replicated_shardings(state)
  models = types.SimpleNamespace(policy=parts["policy"], critic=parts["critic"])
  driver, queued, _ = off_policy.compile_off_policy(state, shardings, mesh, mesh, (), models, txs["policy_tx"],
                                                    txs["value_tx"], parts["score_fn"], parts["cfg"],
                                                    (b[0]["tokens"], b[0]["mask"]), host_scorer=score)
  scored_ids.clear()
  queued = driver.prefill(queued, b[:2])
  found = []
  for i in range(3):
    queued, metrics = driver(queued, b[i + 2])
    found.append(metrics)
  assert scored_ids == [list(batch["ids"]) for batch in b]  # each batch once, as it was drawn
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(queued.policy), jax.tree.leaves(states[-1].policy)))
  for got, want in zip(found, by_hand):  # reward/targets: the tag says which batch each update trained on
    np.testing.assert_allclose([got["reward/targets"], got["kl"]], [want["reward/targets"], want["kl"]], rtol=1e-6)
  assert [round(float(m["reward/targets"])) for m in found] == [0, 1, 2]


def test_importance_corrections_on_a_hand_case():
  behaviour = jnp.log(jnp.array([[0.5, 0.2, 0.1, 0.3]]))
  proximal = jnp.log(jnp.array([[0.5, 0.8, 0.01, 0.3]]))  # w = 1, 4, 0.1, (padding)
  mask = jnp.array([[1, 1, 1, 0]])
  proximal = proximal.at[0, 3].set(-jnp.inf)  # a sentinel on padding: weight 1, no NaN
  for kind, want in (("none", [1, 1, 1]), ("tis", [1, 2, 0.1]), ("clip", [1, 2, 0.5])):
    weights, metrics = importance_weights(kind, proximal, behaviour, mask, 2.0)
    np.testing.assert_allclose(weights[0], [*want, 1.0], rtol=1e-5)
    np.testing.assert_allclose(metrics["is_weight_mean"], 5.1 / 3, rtol=1e-5)
    np.testing.assert_allclose(metrics["is_weight_max"], 4.0, rtol=1e-5)
    np.testing.assert_allclose(metrics["is_clipped_fraction"], {"none": 1.0, "tis": 1 / 3, "clip": 2 / 3}[kind]
                               if kind != "none" else 2 / 3, rtol=1e-5)


def test_ppo_takes_its_ratio_against_the_sampler_and_the_critic_free_weight_their_tokens():
  sampler = types.SimpleNamespace(logprobs=jnp.log(jnp.full((1, 3), 0.25)), mask=jnp.ones((1, 3)))
  recomputed = jnp.log(jnp.full((1, 3), 0.5))
  for algo, old, weighted in (("ppo", sampler.logprobs, False), ("grpo", recomputed, True)):
    cfg = rl_steps.RLConfig(max_new_tokens=3, stop_ids=(1,), pad_id=0, algo=algo, off_policy_steps=1,
                            is_correction="tis", advantage="gae" if algo == "ppo" else "grpo")
    got_old, weights, metrics = rl_steps.behaviour_correction(cfg, recomputed, sampler)
    np.testing.assert_array_equal(got_old, old)
    assert (weights is not None) == weighted and metrics["is_weight_mean"] == pytest.approx(2.0)
  synchronous = rl_steps.RLConfig(max_new_tokens=3, stop_ids=(1,), pad_id=0)
  got_old, weights, metrics = rl_steps.behaviour_correction(synchronous, recomputed, sampler)
  assert got_old is recomputed and weights is None and metrics["rollout/logprob_gap_max"] == pytest.approx(np.log(2))
  # A rollout correction decouples PPO too: the ratio against the trainer's, the weight min(2, 2).
  decoupled = rl_steps.RLConfig(max_new_tokens=3, stop_ids=(1,), pad_id=0, algo="ppo", off_policy_steps=1,
                                rollout_correction="token_tis", rollout_correction_cap=1.5)
  got_old, weights, metrics = rl_steps.behaviour_correction(decoupled, recomputed, sampler)
  np.testing.assert_array_equal(got_old, recomputed)
  np.testing.assert_allclose(weights, 1.5)
  assert metrics["rollout/corrected_fraction"] == 1.0


def test_a_sampler_on_devices_of_its_own_equals_the_colocated_run_and_gets_resharded_weights():
  """One-turn PPO and multi-turn GRPO (training/rl/multi_turn_off_policy.py)."""
  result = subprocess.run([sys.executable, "-m", "tests.off_policy_check"], cwd=ROOT, env=EIGHT_DEVICES,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["split_equals_colocated"], report  # devices 4-7 sample what devices 0-3 would have
  assert report["colocated"]["sampler_devices"] == [0, 1, 2, 3] and not report["colocated"]["transfer_logged"]
  for name in ("split", "resharded"):
    found = report[name]
    assert found["sampler_devices"] == [4, 5, 6, 7] and found["trainer_devices"] == [0, 1, 2, 3], found
    assert found["staleness"] < 1e-4 and found["transfer_logged"], found
  # The trainer's fsdp shards became the sampler's tensor shards: up [64, 128] split 2 ways on mlp.
  assert report["split"]["sampler_shard"] == [64, 128] and report["resharded"]["sampler_shard"] == [64, 64]
  assert abs(report["resharded"]["kl"] - report["split"]["kl"]) < 1e-4
  # Multi-turn, the turns on the host: the sampler's own devices roll out what the colocated one would.
  assert report["multi_turn"]["split_equals_colocated"] and report["multi_turn"]["staleness"] < 1e-4, report
  assert report["multi_turn"]["turns"] > 1
