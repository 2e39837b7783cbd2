"""Multi-turn RL off-policy (`config.env` with `rl.off_policy_steps = K >= 1`): asynchronous RL
with an environment, as AReaL, slime and verl's agent loops run it.

Iteration i rolls out the prompts of iteration i + K with the current policy (the turns, the
environment's answers and the reward functions, on the host: multi_turn.py) and trains on the
rollout drawn at iteration i - K, which the state's queue holds with its host scores
(`RLState.pending`, as off_policy.py's: in every checkpoint, so a resumed run goes on bit for
bit). Staleness, importance corrections and the log-prob check (`rl/staleness`) are the
one-turn off-policy run's.

What overlaps what. With `rollout.devices = N` the sampler has devices of its own and a copy of
the policy (moved there after each update): the update is dispatched first and the whole
rollout, turns and tools included, runs while it trains. So with vLLM's engine in a process of
its own (`rollout.engine=vllm`, `rollout.devices = N`): each turn is the engine's, drawn from a
copy of the policy pushed to it, while the trainer's devices update. Colocated, the turns run
first (the update donates the params they read, and it would hold the devices the sampler needs
anyway), then the update is dispatched and the reward functions score while it runs.
"""

import dataclasses
import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import sharding
from rlhf_jax.models.sampling import SampleOutput
from rlhf_jax.training.policy.policy_state import policy_params
from rlhf_jax.training.rl import multi_turn, off_policy
from rlhf_jax.training.rl.off_policy import InFlight
from rlhf_jax.training.rl.rl_steps import HostScores, Sampled


@dataclasses.dataclass
class MultiTurnOffPolicy:
  """(state, batch of the prompts K iterations ahead) -> (state, metrics). The update's metrics
  are of the oldest rollout; turns, tool calls and reward/env of the one drawn now."""
  rollouts: multi_turn.Rollouts  # its sampler on the sampler's mesh
  view: Callable  # state -> the policy's params where the sampler reads them
  gap: Callable  # compiled (params, Sampled) -> the sampler/trainer log-prob gap
  train: Callable  # compiled state -> (state, metrics), the state donated
  push: Callable  # compiled (state, InFlight) -> state, donated
  arrival: object  # the InFlight's shardings on the training mesh
  host: list  # rewards.HostReward components
  samples_per_prompt: int
  response_len: int
  sample_mesh: object
  split: bool  # the sampler has devices of its own
  model_scores: Callable | None = None  # compiled (state, Sampled) -> the reward model's scores, on the training mesh

  def __call__(self, state, batch):
    """Also logs time/sampling and time/environment (roll_out's), time/rewards, and
    time/update: from the update's dispatch to its metrics (overlapping the host's work)."""
    params, rng = self.view(state), sampling_key(state.rng, self.sample_mesh)
    if self.split:  # its own copy: the update goes first, the turns run while it trains
      dispatched = time.perf_counter()
      state, metrics = self.train(state)
    in_flight, rows, clock = self.draw(params, rng, batch)
    if not self.split:
      dispatched = time.perf_counter()
      state, metrics = self.train(state)
    started = time.perf_counter()
    in_flight, env_rewards = self.scored(in_flight, rows, batch)  # while the device trains
    clock["rewards"] = time.perf_counter() - started
    state = self.push(state, self.arrived(state, in_flight))
    clock["update"] = (jax.block_until_ready(metrics), time.perf_counter() - dispatched)[1]
    times = {f"time/{phase}": seconds for phase, seconds in clock.items()}
    return state, {**metrics, **multi_turn.turn_metrics(rows), "reward/env": float(np.mean(env_rewards)), **times}

  def draw(self, params, rng, batch) -> tuple:
    """(InFlight without host scores, the finished rows, roll_out's clock)."""
    clock = {}
    rows = self.rollouts.run(params, prompt_ids(batch), rng, self.samples_per_prompt, clock)
    sampled = self.rollouts.sampled(rows, self.response_len, self.sample_mesh)
    return InFlight(sampled, self.gap(params, sampled)), rows, clock

  def scored(self, in_flight: InFlight, rows: list, batch) -> tuple:
    """(the InFlight with its host scores, the environments' rewards [n])."""
    total, components, env_rewards = self.rollouts.scores(rows, prompt_ids(batch), self.samples_per_prompt, self.host)
    put = lambda x: sharding.put_batch({"x": np.asarray(x, np.float32)}, self.sample_mesh)["x"]
    return in_flight._replace(host=HostScores(put(total), put(components))), env_rewards

  def prefill(self, state, batches: list):
    """The state with its queue filled by the initial policy on the first K batches."""
    for j, batch in enumerate(batches):
      key = sampling_key(off_policy.prefill_key(state.rng, j), self.sample_mesh)
      in_flight, rows, _ = self.draw(self.view(state), key, batch)
      state = self.push(state, self.arrived(state, self.scored(in_flight, rows, batch)[0]))
    return state

  def arrived(self, state, in_flight: InFlight) -> InFlight:
    """The rollout on the training mesh, with the reward model's scores where the run has one
    (frozen: the state of any iteration scores alike)."""
    in_flight = jax.device_put(in_flight, self.arrival)
    return in_flight._replace(sampled=multi_turn.with_model_scores(self.model_scores, state, in_flight.sampled))


def policy_view(view_shardings, *, moved: bool, copied: bool) -> Callable:
  """state -> the policy's params the sampler reads: moved onto its own devices, a copy where an
  engine's process reads them while the update (which donates the state's) runs, else the state's."""
  if moved:
    return lambda state: jax.device_put(policy_params(state), view_shardings)
  if copied:
    copy = jax.jit(lambda params: jax.tree.map(jnp.copy, params), out_shardings=view_shardings)
    return lambda state: copy(policy_params(state))
  return policy_params


def sampling_key(rng, mesh):
  """An iteration's sampling key, as rl_steps.sample_phase takes it from the state's rng, on `mesh`."""
  return jax.device_put(jax.random.split(rng, 3)[1], sharding.replicated(mesh))


def prompt_ids(batch) -> list:
  return [int(i) for i in np.asarray(jax.device_get(batch["ids"]))]


def abstract_in_flight(rows: int, prompt_len: int, response_len: int, components: int) -> InFlight:
  """The shapes of a multi-turn rollout in the queue (multi_turn.assemble's arrays, HostScores)."""
  a = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)
  response = SampleOutput(a((rows, response_len), jnp.int32), a((rows, response_len), jnp.float32),
                          a((rows, response_len), jnp.int32))
  sampled = Sampled(a((rows, prompt_len + response_len), jnp.int32), a((rows, prompt_len + response_len), jnp.int32),
                    response, a((rows,), jnp.bool_), a((rows,), jnp.float32))
  return InFlight(sampled, a((), jnp.float32), HostScores(a((rows,), jnp.float32), a((rows, components), jnp.float32)))


def compile_multi_turn_off_policy(state, shardings, train_mesh, sample_mesh, rules, models, policy_tx, value_tx,
                                  rl_cfg, *, rollouts: multi_turn.Rollouts, host: list, rows: int, score_fn=None,
                                  engine_apart: bool = False):
  """(driver, state with an empty queue, its shardings). `rollouts`' sampler reads the params
  laid out by `policy_params(shardings)` moved onto `sample_mesh`; `rows`: trajectories per
  iteration; `score_fn`: the reward model's, or None. `engine_apart`: the sampler is an external
  engine in a process of its own (engine_rollout.py), which samples while the trainer updates as
  a sampler on devices of its own does; it reads a copy of the policy (the update donates the
  state's)."""
  split = sample_mesh is not train_mesh or engine_apart
  view_shardings = off_policy.on_mesh(policy_params(shardings), sample_mesh)
  view = policy_view(view_shardings, moved=sample_mesh is not train_mesh, copied=engine_apart)
  data = sharding.batch_sharding(sample_mesh)
  gap = functools.partial(off_policy.logprob_gap, policy=models.policy, cfg=rl_cfg)
  abstract = abstract_in_flight(rows, rollouts.prompts.tokens.shape[1], rl_cfg.max_new_tokens, len(host))
  queue, arrival = (off_policy.in_flight_shardings(abstract, train_mesh, queued) for queued in (True, False))
  empty = lambda: off_policy.stacked(jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), abstract),
                                     rl_cfg.off_policy_steps)
  state = state.replace(pending=jax.jit(empty, out_shardings=queue)())
  shardings = shardings.replace(pending=queue)
  train = functools.partial(off_policy.train_on_oldest, policy=models.policy, critic=models.critic,
                            policy_tx=policy_tx, value_tx=value_tx, cfg=rl_cfg)
  driver = MultiTurnOffPolicy(
      rollouts=rollouts, view=view,
      gap=jax.jit(sharding.with_rules(gap, sample_mesh, rules), in_shardings=(view_shardings, data),
                  out_shardings=sharding.replicated(sample_mesh)),
      train=jax.jit(sharding.with_rules(train, train_mesh, rules), in_shardings=(shardings,),
                    out_shardings=(shardings, sharding.replicated(train_mesh)), donate_argnums=0),
      push=jax.jit(off_policy.push, in_shardings=(shardings, arrival), out_shardings=shardings, donate_argnums=0),
      arrival=arrival, host=host, samples_per_prompt=rl_cfg.samples_per_prompt, response_len=rl_cfg.max_new_tokens,
      sample_mesh=sample_mesh, split=split,
      model_scores=multi_turn.compile_model_scores(score_fn, train_mesh, rules))
  return driver, state, shardings
