"""Multi-turn rollouts: the policy and an environment (envs/environments.py) take turns, and a
trajectory is one row of tokens with a loss mask, 1 on the policy's tokens and 0 on the
prompt's and the environment's.

Each turn samples up to `env.turn_tokens` new tokens for every unfinished row, continuing it
from its KV cache (turn_cache.py: only the tokens new since its last turn are prefilled, and
rows that are done are left out of the decode), keeps them up to the turn's end (a stop id, or the
first prefix whose text closes a tool call) with the sampler's log-probs, and gives the turn's
text to the environment, whose observation is encoded once and appended (loss mask 0,
log-prob 0). A turn without a call, an EOS, `env.max_turns` turns or a full `env.max_tokens`
budget ends the row. Token in, token out: the sampled ids are kept as sampled, and text is
only read, never encoded again.

The result is the `Sampled` the one-turn rollout gives, with `response.mask` the loss mask
(the attention mask, `mask`, covers the observations too), so every advantage estimator,
policy loss, aggregation and KL term train on it unchanged; GAE passes over environment tokens
(algorithms/gae.py) and an outcome score lands on the trajectory's last policy token.
"""

import dataclasses
import functools
import json
import time
from typing import Callable

import jax
import numpy as np

from rlhf_jax import rewards, sharding
from rlhf_jax.algorithms import token_rewards
from rlhf_jax.envs import tools as tool_format
from rlhf_jax.errors import HostStepError
from rlhf_jax.models.sampling import SampleOutput, SamplingParams
from rlhf_jax.training.policy.policy_state import policy_params, reference_params
from rlhf_jax.training.rl import rl_steps
from rlhf_jax.training.rl.rl_steps import HostScores, Sampled


@dataclasses.dataclass
class Trajectory:
  """One row, built on the host."""
  prompt: list  # the prompt's ids, unpadded
  env: object  # the environment answering this row (one per trajectory)
  response: list = dataclasses.field(default_factory=list)  # policy and observation ids, in order
  loss_mask: list = dataclasses.field(default_factory=list)  # 1: the policy's token
  logprobs: list = dataclasses.field(default_factory=list)  # the sampler's; 0 on observations
  done: bool = False
  ended: bool = False  # its last turn ended with EOS (or another stop id)
  turns: int = 0
  tool_calls: int = 0
  tool_errors: int = 0
  step_rewards: float = 0.0  # the environment's per-turn rewards, summed
  transcript: list = dataclasses.field(default_factory=list)  # (who, text): "policy" or "env"

  def append(self, ids, logprobs, policy: bool) -> None:
    self.response += list(ids)
    self.loss_mask += [int(policy)] * len(ids)
    self.logprobs += list(logprobs) if policy else [0.0] * len(ids)


@dataclasses.dataclass(frozen=True)
class TurnLimits:
  max_turns: int = 4
  turn_tokens: int = 32  # new tokens per policy turn
  max_tokens: int = 128  # of a whole response: the policy's turns and the observations


def turn_length(ids, tokenizer, close: str = tool_format.CALL_CLOSE) -> int:
  """How many of a turn's sampled ids it keeps: through its EOS (or first other stop id, the
  tokenizer's `stop_ids`), or through the first prefix whose text closes a tool call (`close`:
  the call format's), else all of them."""
  ids = list(ids)
  ends = [k for k, t in enumerate(ids) if t in tokenizer.stop_ids]
  if ends:
    ids = ids[:ends[0] + 1]
  text = tokenizer.decode(ids)
  if close not in text:
    return len(ids)
  for k in range(1, len(ids) + 1):
    if close in tokenizer.decode(ids[:k]):
      return k
  return len(ids)


class EnvironmentFailed(HostStepError):
  """A user's environment raised: the run stops with one line naming it, after the last
  finished iteration's checkpoint (as a reward function that raises does)."""


def _guarded(call, what: str):
  """call(); what it raises becomes EnvironmentFailed naming `what` ("Board.step"). Tool calls
  are not here: the environment turns their failures into error observations."""
  try:
    return call()
  except Exception as e:  # the user's code, whatever it raises
    raise EnvironmentFailed(f"environment {what} raised {type(e).__name__}: {e}") from None


def roll_out(rows: list, sample, rng, tokenizer, limits: TurnLimits, clock: dict | None = None,
             close: str = tool_format.CALL_CLOSE) -> list:
  """Runs every row's turns; `sample(contexts, live, key) -> SampleOutput` of `turn_tokens` new
  tokens (host arrays) for the `live` rows, from each row's whole context so far (a list of
  ids: prompt, then response; turn_cache.Turns prefills only what it has not seen). Returns the
  rows, finished. `clock` adds up the seconds spent sampling (the device's turn, blocks built and
  results fetched) and in the environment (decoding, its steps and tools, encoding its answers)."""
  clock = {} if clock is None else clock
  for turn in range(limits.max_turns):
    live = np.array([not r.done for r in rows])
    if not live.any():
      break
    started = time.perf_counter()
    out = sample([r.prompt + r.response for r in rows], live, jax.random.fold_in(rng, turn))
    sampled = time.perf_counter()
    for i, row in enumerate(rows):
      if live[i]:
        take_turn(row, out.tokens[i][out.mask[i] > 0], out.logprobs[i][out.mask[i] > 0], tokenizer, limits, close)
    clock["sampling"] = clock.get("sampling", 0.0) + sampled - started
    clock["environment"] = clock.get("environment", 0.0) + time.perf_counter() - sampled
  return rows


def take_turn(row: Trajectory, ids, logprobs, tokenizer, limits: TurnLimits,
              close: str = tool_format.CALL_CLOSE) -> None:
  """The policy's turn (cut at its end and to the budget), then the environment's answer."""
  room = limits.max_tokens - len(row.response)
  keep = min(turn_length(ids, tokenizer, close), room)
  ids, logprobs = [int(t) for t in ids[:keep]], [float(p) for p in logprobs[:keep]]
  row.append(ids, logprobs, policy=True)
  row.turns += 1
  text = tokenizer.decode([t for t in ids if t not in tokenizer.stop_ids])
  row.transcript.append(("policy", text))
  if ids and ids[-1] in tokenizer.stop_ids:
    row.done = row.ended = True
  step = _guarded(lambda: row.env.step(text), f"{type(row.env).__name__}.step")
  row.tool_calls += step.tool_call
  row.tool_errors += step.tool_error
  row.step_rewards += step.reward
  if step.observation and not row.ended:
    observation = tokenizer.encode(step.observation)[:limits.max_tokens - len(row.response)]
    row.append(observation, None, policy=False)
    row.transcript.append(("env", tokenizer.decode(observation)))
  if step.done or row.turns >= limits.max_turns or len(row.response) >= limits.max_tokens:
    row.done = True


def assemble(rows: list, prompt_len: int, response_len: int, pad_id: int):
  """Host arrays of the `Sampled` fields: (tokens [n, P + T], attention mask, SampleOutput of the
  response with the loss mask, ended [n]). Prompts left-padded to P, responses right-padded to T."""
  n = len(rows)
  tokens = np.full((n, prompt_len + response_len), pad_id, np.int32)
  mask = np.zeros_like(tokens)
  response = SampleOutput(np.full((n, response_len), pad_id, np.int32), np.zeros((n, response_len), np.float32),
                          np.zeros((n, response_len), np.int32))
  for i, row in enumerate(rows):
    p, t = len(row.prompt), len(row.response)
    tokens[i, prompt_len - p:prompt_len], mask[i, prompt_len - p:prompt_len] = row.prompt, 1
    tokens[i, prompt_len:prompt_len + t], mask[i, prompt_len:prompt_len + t] = row.response, 1
    response.tokens[i, :t], response.logprobs[i, :t], response.mask[i, :t] = row.response, row.logprobs, row.loss_mask
  ended = np.array([row.ended for row in rows])
  return tokens, mask, response, ended


def transcript_text(row: Trajectory) -> str:
  """The trajectory's response as text, turn by turn (what reward functions read)."""
  return "".join(text for _, text in row.transcript)


def turn_metrics(rows: list) -> dict:
  """Means per trajectory: turns, tool calls, tool errors; and the loss-masked share of tokens."""
  tokens = max(sum(len(r.response) for r in rows), 1)
  return {"turns": float(np.mean([r.turns for r in rows])), "tool_calls": float(np.mean([r.tool_calls for r in rows])),
          "tool_errors": float(np.mean([r.tool_errors for r in rows])),
          "policy_token_fraction": sum(sum(r.loss_mask) for r in rows) / tokens}


@dataclasses.dataclass
class Rollouts:
  """Multi-turn rollouts of a prompt set's rows with the policy's params: the host side of an
  iteration and of an evaluation."""
  sampler: object  # turn_cache.TurnSampler: the compiled turn, from each row's KV cache
  make_env: Callable  # () -> one environment
  prompts: object  # data.prompts.Prompts
  tokenizer: object
  limits: TurnLimits
  temperature: float
  call_close: str = tool_format.CALL_CLOSE  # where a turn that calls a tool ends (the call format's)

  def run(self, params, prompt_ids, rng, repeat: int = 1, clock: dict | None = None) -> list:
    """Each prompt's `repeat` trajectories (next to each other, as groups are), finished
    (`clock`: roll_out's)."""
    rows, prompt_len = [], self.prompts.tokens.shape[1]
    for i in prompt_ids:
      record = {name: values[i] for name, values in self.prompts.columns.items()}
      ids = self.prompts.tokens[i][self.prompts.mask[i] > 0].tolist()
      for _ in range(repeat):
        env = _guarded(self.make_env, "construction (config.env)")
        # TRL's reset: text after the prompt (its start cut to fit).
        opening = _guarded(lambda: env.reset(record), f"{type(env).__name__}.reset")
        prompt = (ids + (self.tokenizer.encode(opening) if opening else []))[-prompt_len:]
        rows.append(Trajectory(prompt=prompt, env=env))
    sample = self.sampler.session(params, SamplingParams.make(self.temperature), len(rows))
    return roll_out(rows, sample, rng, self.tokenizer, self.limits, clock, self.call_close)

  def scores(self, rows: list, prompt_ids, repeat: int, host: list) -> tuple:
    """(total [n], components [n, len(host)], env rewards [n]): the reward functions on each
    trajectory's text, plus its environment's rewards (per turn, and its final one: TRL's
    get_reward, the tool penalties). The sum is the trajectory's outcome score."""
    env_rewards = np.array([row.step_rewards + _guarded(row.env.reward, f"{type(row.env).__name__}.reward")
                            for row in rows], np.float32)
    if not host:
      return env_rewards, np.zeros((len(rows), 0), np.float32), env_rewards
    prompts, columns = self.prompts.of_rows(prompt_ids, repeat)
    completion_ids = [[t for t, m in zip(r.response, r.loss_mask) if m] for r in rows]
    total, components = rewards.score_texts(host, prompts, [transcript_text(r) for r in rows], completion_ids,
                                            columns, with_model=False)
    return total + env_rewards, components, env_rewards

  def sampled(self, rows: list, response_len: int, mesh) -> Sampled:
    """The rows as the update's `Sampled`, laid out as a batch on `mesh`."""
    prompt_len = self.prompts.tokens.shape[1]
    tokens, mask, response, ended = assemble(rows, prompt_len, response_len, self.tokenizer.pad_id)
    fields = {"tokens": tokens, "mask": mask, "ended": ended, "scores": np.zeros(len(rows), np.float32),
              **{f"response_{k}": v for k, v in response._asdict().items() if v is not None}}  # no experts
    placed = sharding.put_batch(fields, mesh)
    response = SampleOutput(**{k: placed[f"response_{k}"] for k in SampleOutput._fields if f"response_{k}" in placed})
    return Sampled(placed["tokens"], placed["mask"], response, placed["ended"], placed["scores"])


@dataclasses.dataclass
class MultiTurnIteration:
  """(state, batch) -> (state, metrics), as the fused iteration: the turns on the host with a
  compiled sampler, then the same compiled scoring pass and update as every iteration."""
  rollouts: Rollouts
  score_tokens: Callable  # compiled (state, Sampled) -> (log-probs, reference log-probs, values)
  update: Callable  # compiled (state, Sampled, HostScores, token scores) -> (state, metrics), state donated
  host: list  # rewards.HostReward components
  samples_per_prompt: int
  response_len: int
  mesh: object
  model_scores: Callable | None = None  # compiled (state, Sampled) -> the reward model's scores [n]

  def __call__(self, state, batch):
    """Also logs where the iteration's time went, in seconds (time/sampling, time/environment:
    roll_out's; time/rewards: the reward functions; time/update: the scoring pass and update)."""
    _, rng, _ = jax.random.split(state.rng, 3)  # the iteration's sampling key, as sample_phase's
    ids = [int(i) for i in np.asarray(jax.device_get(batch["ids"]))]
    clock = {}
    rows = self.rollouts.run(policy_params(state), ids, rng, self.samples_per_prompt, clock)
    started = time.perf_counter()
    total, components, env_rewards = self.rollouts.scores(rows, ids, self.samples_per_prompt, self.host)
    scored = time.perf_counter()
    sampled = with_model_scores(self.model_scores, state, self.rollouts.sampled(rows, self.response_len, self.mesh))
    token_scores = self.score_tokens(state, sampled)
    put = lambda x: sharding.put_batch({"x": x}, self.mesh)["x"]
    state, metrics = self.update(state, sampled, HostScores(put(total), put(components)), token_scores)
    jax.block_until_ready(metrics)  # the next iteration's turns wait for these params anyway
    times = {"time/sampling": clock.get("sampling", 0.0), "time/environment": clock.get("environment", 0.0),
             "time/rewards": scored - started, "time/update": time.perf_counter() - scored}
    return state, {**metrics, **turn_metrics(rows), "reward/env": float(np.mean(env_rewards)), **times}


def with_model_scores(model_scores, state, sampled: Sampled) -> Sampled:
  """The trajectories with the reward model's scores of their whole text (turns and
  observations), where the run has one (`model_scores` not None)."""
  return sampled if model_scores is None else sampled._replace(scores=model_scores(state, sampled))


def compile_model_scores(score_fn, mesh, rules):
  """The reward model's scores of a `Sampled` (its whole rows), compiled; None without one. The
  state is taken as laid out (with or without an off-policy queue)."""
  if score_fn is None:
    return None
  fn = lambda state, sampled: score_fn(state, sampled.tokens, sampled.mask, sampled.response)
  return jax.jit(sharding.with_rules(fn, mesh, rules), out_shardings=sharding.batch_sharding(mesh))


def compile_multi_turn_iteration(shardings, mesh, rules, models, policy_tx, value_tx, rl_cfg, *, rollouts: Rollouts,
                                 host: list, score_fn=None) -> MultiTurnIteration:
  """The compiled scoring pass and update around the host's turns, laid out as the fused iteration
  is; `score_fn`: the reward model's (rl_steps' score_fn), or None."""
  data, wrap = sharding.batch_sharding(mesh), lambda fn: sharding.with_rules(fn, mesh, rules)
  score_tokens = functools.partial(rl_steps.score_tokens, policy=models.policy, critic=models.critic, cfg=rl_cfg)
  update = functools.partial(rl_steps.update_phase, policy=models.policy, critic=models.critic, policy_tx=policy_tx,
                             value_tx=value_tx, cfg=rl_cfg)
  return MultiTurnIteration(
      rollouts=rollouts,
      score_tokens=jax.jit(wrap(score_tokens), in_shardings=(shardings, data), out_shardings=data),
      update=jax.jit(wrap(update), in_shardings=(shardings, data, data, data),
                     out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0),
      host=host, samples_per_prompt=rl_cfg.samples_per_prompt, response_len=rl_cfg.max_new_tokens, mesh=mesh,
      model_scores=compile_model_scores(score_fn, mesh, rules))


@dataclasses.dataclass
class MultiTurnEvaluator:
  """The policy against the reference on held-out prompts, each rolled out with its environment
  (one trajectory per prompt, the same key for both: at step 0 they agree): every reward
  component, accuracy (the first checker's mean), turns, tool calls and tool errors per
  trajectory; the whole transcripts, turns marked, in samples/step_N.jsonl."""
  rollouts: Rollouts  # over the eval prompts
  host: list
  run_dir: object
  seed: int
  label: str
  token: tuple = ()  # (name, weight) of the token rewards (algorithms/token_rewards.py)
  token_params: object = None  # their TokenRewardParams
  model_scores: Callable | None = None  # compile_model_scores' (the reward model), or None
  model_weight: float = 1.0
  mesh: object = None  # where model_scores reads the trajectories

  def __call__(self, state, step: int) -> dict:
    ids = list(range(len(self.rollouts.prompts.texts)))
    rng = jax.random.fold_in(jax.random.key(self.seed + 2), step)
    metrics, lines = {}, [{"prompt": self.rollouts.prompts.texts[i]} for i in ids]
    for prefix, params in (("", policy_params(state)), ("ref_", reference_params(state))):
      rows = self.rollouts.run(params, ids, rng)
      total, components, _ = self.rollouts.scores(rows, ids, 1, self.host)
      if self.model_scores is not None:
        sampled = self.rollouts.sampled(rows, self.rollouts.limits.max_tokens, self.mesh)
        model = np.asarray(jax.device_get(self.model_scores(state, sampled)))
        total = total + self.model_weight * model
        metrics[f"eval/{prefix}reward/model"] = float(np.mean(model))
      if self.token:  # the token rewards on the policy's tokens, as the update scores them
        _, _, response, ended = assemble(rows, self.rollouts.prompts.tokens.shape[1], self.rollouts.limits.max_tokens,
                                         self.rollouts.tokenizer.pad_id)
        scores, weighted = token_rewards.weighted_sum(self.token, response.tokens, response.mask, ended,
                                                      self.token_params)
        total = total + np.asarray(weighted)
        metrics.update({f"eval/{prefix}reward/{name}": float(np.mean(s)) for name, s in scores.items()})
      metrics[f"eval/{prefix}reward"] = float(np.mean(total))
      for j, reward in enumerate(self.host):
        metrics[f"eval/{prefix}reward/{reward.name}"] = float(np.nanmean(components[:, j]))
      checker = next((j for j, r in enumerate(self.host) if r.name in rewards.CHECKERS), None)
      if checker is not None:
        metrics[f"eval/{prefix}accuracy"] = float(np.nanmean(components[:, checker]))
      metrics.update({f"eval/{prefix}{k}": v for k, v in turn_metrics(rows).items()})
      for line, row, score in zip(lines, rows, total):
        line[f"{prefix}transcript"] = [{"turn": who, "text": text} for who, text in row.transcript]
        line[f"{prefix}reward"] = float(score)
    self.run_dir.write_samples(step, [json.dumps(line) for line in lines], suffix="jsonl")
    return metrics
