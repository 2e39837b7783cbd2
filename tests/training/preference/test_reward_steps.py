"""The compiled reward-model step learns which response of a pair is preferred, and points the
right way: the chosen response ends up scored higher on pairs it never saw."""

import functools

import jax
import ml_collections
import numpy as np
import optax

from configs import common
from rlhf_jax import sharding
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.core import setup
from rlhf_jax.training.preference.reward_steps import reward_eval_step, reward_train_step
from tests.conftest import small_model

VOCAB, PAD, TARGET = 16, 15, 3


def synthetic_pairs(rng: np.random.Generator, n: int) -> dict:
  """Right-padded pairs of random responses of random lengths (so the score's position
  varies); the chosen one holds more TARGET tokens, a preference only the whole sequence shows."""
  batch = {}
  counts = {}
  for name in ("a", "b"):
    lengths = rng.integers(4, 13, n)
    tokens = rng.integers(0, 8, (n, 12))
    tokens = np.where(rng.random((n, 12)) < 0.3, TARGET, tokens)
    mask = (np.arange(12) < lengths[:, None]).astype(np.int32)
    tokens = np.where(mask > 0, tokens, PAD).astype(np.int32)
    counts[name] = np.sum((tokens == TARGET) * mask, axis=1)
    batch[name] = (tokens, mask)
  a_chosen = counts["a"] > counts["b"]
  pick = lambda first, second: np.where(a_chosen[:, None], first, second)
  (a, a_mask), (b, b_mask) = batch["a"], batch["b"]
  keep = counts["a"] != counts["b"]
  return {"chosen": pick(a, b)[keep], "chosen_mask": pick(a_mask, b_mask)[keep],
          "rejected": pick(b, a)[keep], "rejected_mask": pick(b_mask, a_mask)[keep],
          "loss_mask": np.ones((int(keep.sum()), 1), np.int32)}


def test_a_reward_step_learns_a_synthetic_preference():
  model = Transformer(small_model(vocab_size=VOCAB, heads=("reward",)))
  tx = optax.adam(3e-3)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
  state, _ = setup.init_state(model, tx, mesh, common.DEFAULT_RULES, seed=0)
  step = jax.jit(functools.partial(reward_train_step, model=model, tx=tx, schedule=lambda s: 3e-3, accum_steps=1))
  evaluate = jax.jit(functools.partial(reward_eval_step, model=model))
  rng = np.random.default_rng(0)
  held_out = synthetic_pairs(rng, 256)
  before, *_ = evaluate(state.params, held_out)
  for _ in range(60):
    batch = synthetic_pairs(rng, 64)
    state, metrics = step(state, {k: v[:32] for k, v in batch.items()})
  sums, chosen, rejected, valid = jax.device_get(evaluate(state.params, held_out))
  accuracy = float(sums["correct"]) / float(sums["pairs"])
  assert abs(float(before["correct"]) / float(before["pairs"]) - 0.5) < 0.15  # an untrained head: chance
  assert accuracy > 0.85, accuracy
  assert np.mean(chosen[valid]) > np.mean(rejected[valid])
  assert float(metrics["accuracy"]) > 0.8 and float(metrics["loss"]) < 0.5
