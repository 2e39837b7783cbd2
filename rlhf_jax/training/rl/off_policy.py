"""Off-policy RL (`rl.off_policy_steps = K >= 1`): each update trains on responses sampled K
iterations before, by the policy of then.

Iteration i samples the prompts of iteration i + K with the current policy and trains on those
of iteration i, sampled at iteration i - K (the first K batches by the initial policy, drawn
before the first iteration: `prefill`). The state holds the K rollouts in flight
(`RLState.pending`, oldest first), so a checkpoint holds all a resumed run needs and it goes on
bit for bit. Sampling the next batch and training on the oldest read the same params and
nothing of each other, so neither waits for the other: with `rollout.devices = N` the sampler
runs on N devices of its own, on its own mesh, while the others train, the two overlapping by
JAX's asynchronous dispatch; after each update the policy's weights move to the sampler shard
by shard (`device_put` between the meshes: nothing is gathered onto one device). With
`rollout.devices = 0` both run on the same devices, one after the other.

Host reward functions (`reward.fns`) score each rollout on the host as soon as it is sampled,
while the device trains on the oldest, and their scores join it in the queue: a rollout is
trained on K iterations after it was scored, so the host's work is off the device's path.

The behaviour policy's log-probs are the sampler's; `rl_steps.behaviour_correction` takes PPO's
ratio against them and weights the critic-free methods' tokens by `rl.is_correction`. Each
rollout also carries `rl/staleness`: the largest gap between the sampler's log-probs and the
trainer's forward pass on the same tokens under the same params, which must stay ~0 (one model
samples and trains).
"""

import dataclasses
import functools
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from rlhf_jax import sharding
from rlhf_jax.training.core.logprobs import response_logprobs
from rlhf_jax.training.policy.policy_state import policy_params
from rlhf_jax.training.rl import rl_steps
from rlhf_jax.training.rl.rl_steps import HostScores, Sampled


class InFlight(NamedTuple):
  """A rollout sampled and scored, waiting for its update."""
  sampled: Sampled
  logprob_gap: jax.Array  # max |sampler - trainer| log-prob of its tokens under the sampling params
  host: HostScores | None = None  # the host reward functions' scores (None: in-graph rewards only)


def sample_in_flight(state, prompts, prompt_mask, *, policy, score_fn, cfg) -> InFlight:
  """The sampling half of an iteration (rl_steps.sample_phase) and its log-prob check."""
  sampled = rl_steps.sample_phase(state, prompts, prompt_mask, policy=policy, score_fn=score_fn, cfg=cfg)
  return InFlight(sampled, logprob_gap(policy_params(state), sampled, policy=policy, cfg=cfg))


def logprob_gap(params, sampled: Sampled, *, policy, cfg) -> jax.Array:
  """max |sampler - trainer| log-prob over the sampled responses' (loss-masked) tokens, the
  trainer's forward pass taken under the params that sampled them: ~0, as one model does both."""
  forward = functools.partial(response_logprobs, policy, params, prompt_len=rl_steps.prompt_length(sampled),
                              temperature=cfg.temperature)
  trainer = rl_steps.in_chunks(forward, (sampled.tokens, sampled.mask), cfg.minibatches * cfg.accum_steps)
  return jnp.max(jnp.where(sampled.response.mask > 0, jnp.abs(trainer - sampled.response.logprobs), 0.0))


def train_on_oldest(state, *, policy, critic, policy_tx, value_tx, cfg):
  """The update half on the oldest rollout in flight: (state, metrics); the queue is unchanged
  until `push` (so the update need not wait for the sampler)."""
  oldest = jax.tree.map(lambda x: x[0], state.pending)
  state, metrics = rl_steps.update_phase(state, oldest.sampled, oldest.host, policy=policy, critic=critic,
                                         policy_tx=policy_tx, value_tx=value_tx, cfg=cfg)
  return state, {**metrics, "rl/staleness": oldest.logprob_gap}


def push(state, in_flight: InFlight):
  """The queue after an update: the oldest rollout out, the newest in."""
  return state.replace(pending=jax.tree.map(lambda q, x: jnp.concatenate([q[1:], x[None]]), state.pending,
                                            in_flight))


def prefill_key(rng, j: int):
  """The rng of the j-th rollout drawn before the first iteration (the initial policy's)."""
  return jax.random.fold_in(rng, 1_000_003 + j)


def stacked(tree, k: int):
  return jax.tree.map(lambda x: jnp.stack([x] * k), tree)


def on_mesh(shardings, mesh):
  """The same partition specs on another mesh (its axes are the same names)."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s.spec), shardings)


def in_flight_shardings(abstract: InFlight, mesh, queued: bool):
  """Rows split over the data axes (behind the queue's axis when `queued`); scalars replicated."""
  spec = lambda x: PartitionSpec(*([None] if queued else []), *([("data", "fsdp")] if x.ndim else []))
  return jax.tree.map(lambda x: NamedSharding(mesh, spec(x)), abstract)


@dataclasses.dataclass
class OffPolicyIteration:
  """(state, batch of the prompts K iterations ahead) -> (state, metrics), as the fused
  iteration is for K = 0; also logs when each phase's result was ready, in seconds after the
  iteration was dispatched (`time/transfer`, `time/rollout`, `time/update`): with the two sides
  overlapping, the iteration takes about the larger of rollout and update, not their sum."""
  view: Callable  # state -> what the sampler reads, on its devices (the weight transfer)
  sample: Callable  # compiled (view, prompts, mask) -> InFlight
  train: Callable  # compiled state -> (state, metrics), the state donated
  push: Callable  # compiled (state, InFlight) -> state, donated
  arrival: object  # the InFlight's shardings on the training mesh
  split: bool  # the sampler has devices of its own
  score: Callable | None = None  # host_rewards.HostScorer on the sampler's mesh (None: in-graph rewards)
  sampler_metrics: Callable = dict  # an external engine's metrics of this iteration (engine_rollout.py)
  # (what `sample` gave, the state after the update) -> InFlight: an engine in its own process
  # is asked before the update and answers after it (engine_rollout.EngineSampler.finish)
  finish: Callable = lambda in_flight, state: in_flight  # (the others': already one)

  def __call__(self, state, batch):
    started = time.perf_counter()
    view = self.view(state)
    in_flight = self.sample(view, batch["tokens"], batch["mask"])
    state, metrics = self.train(state)
    in_flight = self.finish(in_flight, state)
    in_flight = self.scored(in_flight, batch)  # on the host, while the device trains
    state = self.push(state, jax.device_put(in_flight, self.arrival))
    ready = lambda x: (jax.block_until_ready(x), time.perf_counter() - started)[1]
    # Colocated, the view is the state's own arrays, which the update has donated.
    times = {"time/transfer": ready(view.policy)} if self.split else {}
    times.update({"time/rollout": ready(in_flight), "time/update": ready(metrics)})
    return state, {**metrics, **times, **self.sampler_metrics()}

  def scored(self, in_flight: InFlight, batch) -> InFlight:
    return in_flight if self.score is None else in_flight._replace(host=self.score(in_flight.sampled, batch["ids"]))

  def prefill(self, state, batches: list):
    """The state with its queue filled by the initial policy on the first K batches."""
    drawn = [self.finish(self.sample(self.view(state.replace(rng=prefill_key(state.rng, j))), b["tokens"], b["mask"]),
                         state) for j, b in enumerate(batches)]
    for in_flight, batch in zip(drawn, batches):
      state = self.push(state, jax.device_put(self.scored(in_flight, batch), self.arrival))
    return state


@dataclasses.dataclass
class SamplerView:
  """What the sampler reads of the state, on the sampler's mesh: the policy (and its rng) moved
  over at each iteration, the frozen parts it needs (a LoRA policy's base, the reward model)
  once."""
  shardings: object  # of the view, on the sampler's mesh
  frozen: dict  # the frozen parts, already there

  def __call__(self, state):
    moved = jax.device_put((state.policy, state.rng, state.step),
                           (self.shardings.policy, self.shardings.rng, self.shardings.step))
    return sampler_fields(state).replace(policy=moved[0], rng=moved[1], step=moved[2], **self.frozen)


def sampler_fields(state):
  """The state less what sampling never reads (optimizer states, the critic, the queue)."""
  return state.replace(policy_opt=None, value=None, value_opt=None, pending=None, kl=None, baseline=None,
                       ref=state.ref if state.lora else None)


def compile_off_policy(state, shardings, train_mesh, sample_mesh, rules, models, policy_tx, value_tx, score_fn,
                       rl_cfg, prompts_abstract, host_scorer=None, engine=None):
  """(driver, state with an empty queue, its shardings): the compiled halves laid out on their
  meshes (the same one when colocated). `prompts_abstract`: (tokens, mask) of a prompt batch;
  `host_scorer`: a function (Sampled, prompt ids) -> HostScores on the sampler's mesh, or None;
  `engine`: an engine_rollout.EngineSampler drawing the rollouts instead (colocated)."""
  k = rl_cfg.off_policy_steps
  split = sample_mesh is not train_mesh
  view_shardings = on_mesh(sampler_fields(shardings), sample_mesh)
  if split:
    frozen = {name: jax.device_put(getattr(state, name), getattr(view_shardings, name))
              for name in ("ref", "reward") if getattr(view_shardings, name) is not None}
    view = SamplerView(view_shardings, frozen)
  else:
    view = sampler_fields
  data = sharding.batch_sharding(sample_mesh)
  sample_fn = sharding.with_rules(functools.partial(sample_in_flight, policy=models.policy, score_fn=score_fn,
                                                    cfg=rl_cfg), sample_mesh, rules)
  abstract = jax.eval_shape(sample_fn, sampler_fields(state), *prompts_abstract)
  sample = jax.jit(sample_fn, in_shardings=(view_shardings, data, data),
                   out_shardings=in_flight_shardings(abstract, sample_mesh, False))
  if host_scorer is not None:  # the queue holds the host's scores too
    abstract = abstract._replace(host=host_scores_shape(abstract.sampled, len(rl_cfg.host_rewards)))
  queue, arrival = (in_flight_shardings(abstract, train_mesh, queued) for queued in (True, False))
  state = state.replace(pending=jax.jit(lambda: stacked(jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), abstract),
                                                        k), out_shardings=queue)())
  shardings = shardings.replace(pending=queue)
  train = functools.partial(train_on_oldest, policy=models.policy, critic=models.critic, policy_tx=policy_tx,
                            value_tx=value_tx, cfg=rl_cfg)
  driver = OffPolicyIteration(
      view=view, sample=engine.in_flight if engine else sample,
      train=jax.jit(sharding.with_rules(train, train_mesh, rules), in_shardings=(shardings,),
                    out_shardings=(shardings, sharding.replicated(train_mesh)), donate_argnums=0),
      push=jax.jit(push, in_shardings=(shardings, arrival), out_shardings=shardings, donate_argnums=0),
      arrival=arrival, split=split, score=host_scorer, sampler_metrics=engine.take_metrics if engine else dict,
      **({"finish": engine.finish} if engine and engine.overlaps else {}))
  return driver, state, shardings


def host_scores_shape(sampled: Sampled, components: int) -> HostScores:
  """The HostScores of a rollout's rows: total [n], components [n, c], the greedy total [n] (ReMax)."""
  n = sampled.scores.shape[0]
  row = jax.ShapeDtypeStruct((n,), jnp.float32)
  return HostScores(row, jax.ShapeDtypeStruct((n, components), jnp.float32),
                    row if sampled.greedy is not None else None)
