"""An RL iteration with host reward functions: compiled rollout -> host scoring -> compiled update.

JAX dispatches asynchronously, so the device does not wait for the host: the sampling half
returns once the responses exist, the log-probs and values (policy, reference, critic: none of
them needs the score) are dispatched next, and the host decodes and scores while the device
computes them; the update then takes the host's scores. Each process scores its own rows.

With vmapped seeds (`vmap_seeds > 1`, one process) each compiled part is vmapped over the seed
axis, as the fused iteration is, and the host scores each seed's rows in turn.
"""

import dataclasses
import functools
from typing import Callable

import jax
import numpy as np

from jax.sharding import NamedSharding, PartitionSpec

from rlhf_jax import rewards, sharding
from rlhf_jax.training.rl import rl_steps, seeds
from rlhf_jax.training.rl.rl_steps import HostScores


@dataclasses.dataclass
class HostScorer:
  """The host reward components on this process's rows of a `Sampled` (and of its greedy
  responses, for ReMax), as global arrays laid out like the batch on `mesh`."""
  host: list  # rewards.HostReward components
  with_model: bool  # a component scored in the graph (the reward model, a token reward) scores every row too
  prompts: object  # data.prompts.Prompts of the training split
  tokenizer: object
  samples_per_prompt: int
  mesh: object
  seeds: int = 0  # vmapped seeds (one process): a Sampled of [seed, row, ...], each seed scored in turn

  def __call__(self, sampled, prompt_ids) -> HostScores:
    prompts, columns = self.prompts.of_rows(prompt_ids, self.samples_per_prompt)
    if self.seeds:
      host = jax.device_get(sampled)
      scored = [self._scores(jax.tree.map(lambda x, i=i: x[i], host), np.asarray, prompts, columns)
                for i in range(self.seeds)]
      return jax.device_put(jax.tree.map(lambda *xs: np.stack(xs), *scored), seed_rows(self.mesh))
    scores = self._scores(sampled, sharding.local_rows, prompts, columns)
    return jax.tree.map(lambda x: sharding.put_batch({"x": x}, self.mesh)["x"], scores)

  def _scores(self, sampled, rows, prompts, columns) -> HostScores:
    """The host arrays of `sampled`'s scores; `rows` reads this process's rows of an array."""
    total, components = self._score_rows(sampled, rows, prompts, columns)
    greedy = self._score_rows(sampled.greedy, rows, prompts, columns)[0] if sampled.greedy is not None else None
    return HostScores(total, components, greedy)

  def _score_rows(self, sampled, rows, prompts, columns):
    tokens, mask = (rows(x) for x in (sampled.response.tokens, sampled.response.mask))
    completion_ids = [t[m > 0].tolist() for t, m in zip(tokens, mask)]
    completions = [self.tokenizer.decode(np.asarray(ids, np.int32)) for ids in completion_ids]
    return rewards.score_texts(self.host, prompts, completions, completion_ids, columns, self.with_model)


@dataclasses.dataclass
class HostScoredIteration:
  """(state, batch) -> (state, metrics), as the fused iteration, for host reward components."""
  sample: Callable  # compiled (state, prompts, mask) -> Sampled
  score_tokens: Callable  # compiled (state, Sampled) -> (log-probs, reference log-probs, values)
  update: Callable  # compiled (state, Sampled, HostScores, token scores) -> (state, metrics), state donated
  score: HostScorer | None  # None: in-graph rewards only (an external engine samples: engine_rollout.py)
  sampler_metrics: Callable = dict  # the sampler's own metrics of this iteration (an engine's push, its time)

  def __call__(self, state, batch):
    sampled = self.sample(state, batch["tokens"], batch["mask"])
    token_scores = self.score_tokens(state, sampled)  # runs while the host scores
    host = None if self.score is None else self.score(sampled, batch["ids"])
    state, metrics = self.update(state, sampled, host, token_scores)
    return state, {**metrics, **self.sampler_metrics()}


def seed_rows(mesh) -> NamedSharding:
  """Vmapped seeds' batches: [seed, row, ...], the rows split as a batch's."""
  return NamedSharding(mesh, PartitionSpec(None, ("data", "fsdp")))


def compile_host_iteration(shardings, mesh, rules, models, policy_tx, value_tx, score_fn, rl_cfg, vmap_seeds=1,
                           engine=None, **host_fields):
  """The three compiled parts around the host's scoring, laid out as the fused iteration is
  (with `vmap_seeds` > 1 vmapped over the seed axis of a stacked state, the prompts shared).
  `engine`: an engine_rollout.EngineSampler drawing the responses instead (no host rewards:
  `host_fields["host"]` empty, nothing scored on the host)."""
  data, wrap = sharding.batch_sharding(mesh), lambda fn: sharding.with_rules(fn, mesh, rules)
  sample = functools.partial(rl_steps.sample_phase, policy=models.policy, score_fn=score_fn, cfg=rl_cfg)
  score_tokens = functools.partial(rl_steps.score_tokens, policy=models.policy, critic=models.critic, cfg=rl_cfg)
  update = functools.partial(rl_steps.update_phase, policy=models.policy, critic=models.critic, policy_tx=policy_tx,
                             value_tx=value_tx, cfg=rl_cfg)
  rows = data
  if vmap_seeds > 1:
    axes, rows = seeds.state_axes(shardings), seed_rows(mesh)
    sample = jax.vmap(sample, in_axes=(axes, None, None))
    score_tokens = jax.vmap(score_tokens, in_axes=(axes, 0))
    update = jax.vmap(update, in_axes=(axes, 0, 0, 0), out_axes=(axes, 0))
  scorer = HostScorer(samples_per_prompt=rl_cfg.samples_per_prompt, mesh=mesh, seeds=vmap_seeds if vmap_seeds > 1 else 0,
                      **host_fields) if host_fields.get("host") else None
  return HostScoredIteration(
      sample=engine or jax.jit(wrap(sample), in_shardings=(shardings, data, data), out_shardings=rows),
      score_tokens=jax.jit(wrap(score_tokens), in_shardings=(shardings, rows), out_shardings=rows),
      update=jax.jit(wrap(update), in_shardings=(shardings, rows, rows, rows),
                     out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0),
      score=scorer, sampler_metrics=engine.take_metrics if engine else dict)
