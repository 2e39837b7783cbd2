"""Several seeds of one RL config as one `jax.vmap`ped program (PureJaxRL's trick).

An iteration is a pure function of the state, so stacking the seeds' states along a new
leading axis and vmapping the iteration runs them all in one compiled program. The frozen
reference and reward params are the same for every seed: they are not stacked (vmap's
`in_axes=None`), so memory grows only with the trained params and optimizer states.

On disk, seed s has its own run directory WORKDIR/seed_s (config.json with that seed,
metrics.jsonl, TensorBoard, samples, summary.json), read by the sweep aggregator like any run;
the checkpoint in WORKDIR/checkpoints holds the stacked state, seed i at index i of every array.
"""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np

from rlhf_jax.metrics_log import MetricsLog

# RLState fields that differ between seeds; the others (`ref`, `reward` and the iteration
# count `step`, which every seed advances together) are shared.
PER_SEED = ("policy", "policy_opt", "value", "value_opt", "kl", "baseline", "rng")


def state_axes(state):
  """The vmap axes of an RLState: 0 on the per-seed fields, None on the shared ones."""
  return state.replace(**{f: 0 for f in PER_SEED}, step=None, ref=None, reward=None)


def stack(states):
  """[(state, shardings)] of single seeds -> (state, shardings) whose per-seed fields have a
  leading seed axis (not sharded); shared fields from the first seed."""
  first, shardings = states[0]
  seed_axis = lambda s: NamedSharding(s.mesh, PartitionSpec(None, *s.spec))
  stacked_shardings = shardings.replace(**{f: jax.tree.map(seed_axis, getattr(shardings, f)) for f in PER_SEED})
  fields = lambda state: {f: getattr(state, f) for f in PER_SEED}
  stack_all = jax.jit(lambda *fs: jax.tree.map(lambda *xs: jnp.stack(xs), *fs),
                      out_shardings=fields(stacked_shardings))
  return first.replace(**stack_all(*[fields(s) for s, _ in states])), stacked_shardings


def unstack(state, i: int):
  """Seed i's state, as a single-seed run would hold it."""
  return state.replace(**{f: jax.tree.map(lambda x: x[i], getattr(state, f)) for f in PER_SEED})


def per_seed(metrics: dict, i: int) -> dict:
  """Seed i's entry of metrics whose values are per-seed arrays or lists; other values as they are."""
  pick = lambda v: v[i] if isinstance(v, (list, tuple)) or np.ndim(v) > 0 else v
  return {k: pick(v) for k, v in metrics.items()}


class SeedLogs:
  """MetricsLog's interface over one log per seed: metrics and texts are split by seed."""

  def __init__(self, run_dirs, start_step: int, num_steps: int):
    self.logs = [MetricsLog(d, start_step, num_steps) for d in run_dirs]

  def write(self, step: int, metrics: dict) -> None:
    for i, log in enumerate(self.logs):
      log.write(step, per_seed(metrics, i))

  def last(self, key: str):
    return self.logs[0].last(key)  # the seeds run in step together

  def text(self, step: int, tag: str, texts) -> None:
    for log, text in zip(self.logs, texts):
      log.text(step, tag, text)

  def advance(self, step: int, loss=None) -> None:
    for log in self.logs:
      log.advance(step, loss)

  def close(self) -> None:
    for log in self.logs:
      log.close()


class SeedEvaluator:
  """One evaluator per seed, each on its slice of the stacked state; values become per-seed lists."""

  def __init__(self, evaluators):
    self.evaluators = evaluators

  def __call__(self, state, step: int) -> dict:
    results = [evaluate(unstack(state, i), step) for i, evaluate in enumerate(self.evaluators)]
    return {k: [r[k] for r in results] for k in results[0]}


def mean_summary(summary: dict, seeds) -> dict:
  """The run's summary.json: each per-seed metric's mean over seeds, and the seeds."""
  means = {k: float(np.mean(v)) if isinstance(v, list) else v for k, v in summary.items() if k != "samples"}
  return {**means, "seeds": list(seeds)}
