"""Token rewards (algorithms/token_rewards.py): hand cases, and in the compiled iteration the
same update as the equal host reward."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms import token_rewards
from rlhf_jax.algorithms.token_rewards import TokenRewardParams
from rlhf_jax.training.rl import rl_steps
from rlhf_jax.training.rl.rl_steps import HostScores
from tests.training.rl.test_rl_steps import build

TOKENS = jnp.array([[5, 6, 7, 0], [6, 7, 5, 6], [5, 6, 0, 0]])
MASK = jnp.array([[1, 1, 1, 0], [1, 0, 1, 1], [1, 1, 0, 0]])  # row 1: its 2nd token is the environment's
ENDED = jnp.array([True, False, False])


def test_length_counts_the_policys_tokens_over_the_budget():
  scores = token_rewards.length(TOKENS, MASK, ENDED, TokenRewardParams(max_new_tokens=4))
  np.testing.assert_allclose(scores, [-0.75, -0.75, -0.5])


def test_format_finds_the_ids_in_a_row_of_policy_tokens_only():
  check = lambda ids: np.asarray(token_rewards.format_check(TOKENS, MASK, ENDED, TokenRewardParams(4, ids)))
  np.testing.assert_array_equal(check((5, 6)), [1, 1, 1])  # row 1 at its end
  np.testing.assert_array_equal(check((6, 7)), [1, 0, 0])  # row 1's 6, 7 straddles the environment's token
  np.testing.assert_array_equal(check((7, 0)), [0, 0, 0])  # a pad is no token of the response
  np.testing.assert_array_equal(check((5, 6, 7, 0, 1)), [0, 0, 0])  # longer than the response


def test_the_weighted_sum_and_each_component():
  scores, total = token_rewards.weighted_sum((("length", 2.0), ("format", 0.5)), TOKENS, MASK, ENDED,
                                             TokenRewardParams(4, (6, 7)))
  np.testing.assert_allclose(total, 2.0 * np.array([-0.75, -0.75, -0.5]) + 0.5 * np.array([1, 0, 0]))
  assert sorted(scores) == ["format", "length"]


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_a_token_reward_in_the_graph_updates_as_the_same_reward_from_the_host(algo):
  """`length` weighted 0.5 next to the in-graph score: the update equals the one whose host
  reward returns -0.5 * tokens / 8 for each response."""
  built = build(algo=algo, token_rewards=(("length", 0.5),))
  parts, txs, state = built["parts"], built["txs"], built["state"]
  plain = dict(parts, cfg=build(algo=algo)["parts"]["cfg"])
  prompts = built["prompts"]
  sampled = jax.jit(functools.partial(rl_steps.sample_phase, **{k: parts[k] for k in ("policy", "score_fn", "cfg")}))(
      state, prompts, jnp.ones_like(prompts))
  lengths = jnp.sum(sampled.response.mask, axis=1).astype(jnp.float32)
  host = HostScores(-0.5 * lengths / 8, (-0.5 * lengths / 8)[:, None])
  update = lambda p, *args: jax.jit(functools.partial(rl_steps.update_phase, policy=p["policy"], critic=p["critic"],
                                                      cfg=p["cfg"], **txs))(*args)
  in_graph, graph_metrics = update(parts, jax.tree.map(jnp.copy, state), sampled)
  on_host, host_metrics = update(plain, jax.tree.map(jnp.copy, state), sampled, host)
  assert graph_metrics["score"] == host_metrics["score"]
  assert float(graph_metrics["reward/length"]) == pytest.approx(float(jnp.mean(-lengths / 8)))
  for a, b in zip(jax.tree.leaves(in_graph.policy), jax.tree.leaves(on_host.policy)):
    np.testing.assert_array_equal(a, b)
