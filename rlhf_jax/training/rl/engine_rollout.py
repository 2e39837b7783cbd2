"""Rollouts drawn by an external engine (`rollout.engine=vllm`, interop/vllm_engine.py).

`EngineSampler` stands where the compiled sampling half stands (rl_steps.sample_phase): it
takes the state and a prompt batch and returns the same `Sampled`, so the rest of the iteration
(host scoring, the compiled scoring pass and update: host_rewards.py; the K-deep queue:
off_policy.py) is unchanged. On the host: the prompts' ids, one seed per response drawn from the
iteration's sampling key (the state's rng, so a resumed run draws the same seeds), the engine's
responses; on the device (compiled once): the `Sampled` around them, scored by the reward model
in the graph as our own sampler's are.

The engine holds a copy of the policy: before sampling, when the state's step (and seed) is not
the one whose weights it holds (after each update, and once after a resume), the policy's weights
are pushed (LoRA adapters merged into them first); `time/weight_push`, `rollout/weight_push_mb` and
`time/engine_rollout` join the iteration's metrics. The sampler/trainer mismatch is logged and
corrected as for any sampler (rl_steps.behaviour_correction, `rl.rollout_correction`).

With vmapped seeds (`vmap_seeds` > 1, on-policy) the engine holds one seed's policy at a time:
each seed's is pushed and its rollout drawn in turn, then the `Sampled` of [seed, row, ...] is
assembled vmapped, as the update is; the engine's metrics are summed over the seeds.
"""

import dataclasses
import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import rl_plan, sharding
from rlhf_jax.errors import UserError
from rlhf_jax.interop import hf_export, vllm_engine, vllm_lora, vllm_process
from rlhf_jax.models import lora
from rlhf_jax.models.config import ModelConfig
from rlhf_jax.models.sampling import SampleOutput
from rlhf_jax.training.policy.policy_state import policy_params
from rlhf_jax.training.rl import host_rewards, off_policy, rl_steps, seeds
from rlhf_jax.training.rl.rl_config import RLConfig


def check_engine(cfg) -> None:
  """An external engine's (rollout.engine=vllm) settings, and that it is installed;
  `rollout.devices` > 0 (the engine in its own process on devices of its own) is checked with
  the off-policy fields (check_off_policy) and here against the machine (vllm_process.placement)."""
  if cfg.vmap_seeds > 1 and jax.process_count() > 1:  # each seed's rows are stacked on the one host
    raise UserError("rollout.engine=vllm with vmap_seeds > 1 runs on one process: run the seeds as separate runs, "
                    "or vmap_seeds=1")
  vllm_engine.settings_of(cfg)
  if not vllm_engine.available():
    raise UserError(vllm_engine.INSTALL)
  if cfg.rollout.devices > 0:
    vllm_process.placement(cfg.rollout.devices)


def response_seeds(state, rows: int) -> jax.Array:
  """One seed per response from the iteration's sampling key (rl_steps.sample_phase's)."""
  _, sample_rng, _ = jax.random.split(state.rng, 3)
  return jax.random.randint(sample_rng, (rows,), 0, 2**31 - 1)


def assemble(state, prompts, prompt_mask, tokens, mask, logprobs, *, score_fn, cfg: RLConfig) -> rl_steps.Sampled:
  """The `Sampled` of an engine's responses (`samples_per_prompt` per prompt, in order)."""
  prompts, prompt_mask = (jnp.repeat(x, cfg.samples_per_prompt, axis=0) for x in (prompts, prompt_mask))
  return rl_steps.sampled_of(state, prompts, prompt_mask, SampleOutput(tokens, logprobs, mask), score_fn=score_fn,
                             cfg=cfg)


def plain_weights(params, model_cfg: ModelConfig):
  """A policy's params as an engine takes them: LoRA adapters folded into their base."""
  return lora.merge(params, model_cfg) if lora.has_adapters(params) else params


RESPONSE_FIELDS = ("tokens", "mask", "logprobs")  # of each engine response, as `assemble` takes them


def summed(metrics: list) -> dict:
  """Several pushes' and rollouts' metrics (vmapped seeds': one each per seed) as the iteration's:
  each key's sum, so the times and megabytes are what the iteration spent on the engine."""
  keys = dict.fromkeys(k for m in metrics for k in m)
  return {k: sum(m[k] for m in metrics if k in m) for k in keys}


def push_policy(engine, params, model_cfg: ModelConfig, *, adapters: bool, holds_base: bool) -> dict:
  """Pushes a policy to `engine`; the push's metrics. Its weights with any LoRA adapters merged,
  or with `adapters` (`rollout.vllm.lora_adapters`, a LoRA policy) the frozen base unless the
  engine `holds_base` already, then the adapters alone (vllm_lora.py)."""
  if not adapters:
    return engine.push(plain_weights(params, model_cfg), model_cfg)
  base = {} if holds_base else engine.push(vllm_lora.base_params(params), model_cfg)
  return summed([base, engine.push_adapters(params, model_cfg)])


@dataclasses.dataclass
class Drawing:
  """A rollout the engine was asked for: what `EngineSampler.sampled` needs to build its `Sampled`."""
  prompts: jax.Array
  prompt_mask: jax.Array
  calls: list  # the engine's handles of the responses asked for (ReMax: and the greedy ones), in order
  policy: object = None  # a copy of the params that drew it (the engine in its own process: the update donates them)


@dataclasses.dataclass
class EngineSampler:
  """(state, prompts, mask) -> Sampled from `engine`, as the compiled sampling half; the
  engine's weights kept the state's policy's (`sync`). With the engine in its own process
  (`overlaps`) an off-policy rollout is asked for before the update and collected after it."""
  engine: object  # vllm_engine.VLLMEngine, or vllm_process.EngineProcess (its own process)
  model_cfg: ModelConfig  # the policy's (its LoRA scale merges adapters; its blocks name the HF tensors)
  cfg: RLConfig
  sampling: dict  # temperature, top_k, top_p
  assemble: Callable  # compiled (state, prompts, mask, tokens, mask, log-probs) -> Sampled
  seeds: Callable  # compiled (state) -> [rows] seeds
  mesh: object
  vmap_seeds: int = 1  # > 1: a stacked state, each seed's rollout drawn in turn; `assemble` vmapped over them
  gap: Callable | None = None  # compiled (state, Sampled) -> the max |sampler - trainer| log-prob (off-policy)
  copy: Callable | None = None  # compiled params -> a copy (`overlaps`: the params that drew a rollout kept)
  overlaps: bool = False  # the engine samples while the trainer updates (its own process)
  adapters: bool = False  # a LoRA policy's adapters pushed as vLLM adapters (its base once: push_policy)
  held_policy: tuple | None = None  # (the state's step, the seed) whose policy the engine holds
  metrics: dict = dataclasses.field(default_factory=dict)  # of the last call, taken by the iteration

  def __call__(self, state, prompts, prompt_mask) -> rl_steps.Sampled:
    if self.vmap_seeds > 1:
      return self.seeds_sampled(state, prompts, prompt_mask)
    return self.sampled(self.submit(state, prompts, prompt_mask), state)

  def submit(self, state, prompts, prompt_mask, seed: int = 0) -> Drawing:
    """Pushes the state's policy (of vmapped seed `seed`) unless the engine holds it, then asks
    for the batch's responses (the engine in its own process starts on them at once)."""
    self.metrics = self.sync(state, seed)
    # This process's rows (each process's engine draws its own, as each scores its own).
    ids = [row[m > 0].tolist() for row, m in zip(sharding.local_rows(prompts), sharding.local_rows(prompt_mask))]
    ids = [p for p in ids for _ in range(self.cfg.samples_per_prompt)]
    per_response = sharding.local_rows(self.seeds(state))
    calls = [self.engine.submit(ids, per_response, max_new_tokens=self.cfg.max_new_tokens,
                                stop_ids=self.cfg.stop_ids, pad_id=self.cfg.pad_id, greedy=greedy, **self.sampling)
             for greedy in ((False, True) if self.cfg.needs_greedy else (False,))]  # ReMax: a greedy row each
    return Drawing(prompts, prompt_mask, calls)

  def sampled(self, drawing: Drawing, state) -> rl_steps.Sampled:
    """The `Sampled` of the engine's responses."""
    responses = self.received(drawing)
    self.engine.rest()
    put = lambda response: sharding.put_batch(dict(zip(RESPONSE_FIELDS, response)), self.mesh)
    return self.assembled(state, drawing.prompts, drawing.prompt_mask, [put(r) for r in responses])

  def seeds_sampled(self, state, prompts, prompt_mask) -> rl_steps.Sampled:
    """Vmapped seeds' `Sampled`, of [seed, row, ...]: the engine holds one policy at a time, so
    seed i's is pushed and its responses drawn (with seed i's own seeds: a single-seed run's with
    seed cfg.seed + i) before seed i + 1's; then all are assembled at once, vmapped."""
    view, drawn, metrics = off_policy.sampler_fields(state), [], []  # only the policy and rng are sliced
    for i in range(self.vmap_seeds):
      drawn.append(self.received(self.submit(seeds.unstack(view, i), prompts, prompt_mask, seed=i)))
      metrics.append(self.metrics)
    self.engine.rest()
    self.metrics = summed(metrics)
    stack = lambda per_seed: dict(zip(RESPONSE_FIELDS, map(np.stack, zip(*per_seed))))
    # drawn[seed][call] -> per call (the samples; ReMax's greedy rows), its fields stacked over seeds
    responses = [jax.device_put(stack(per_seed), host_rewards.seed_rows(self.mesh)) for per_seed in zip(*drawn)]
    return self.assembled(state, prompts, prompt_mask, responses)

  def received(self, drawing: Drawing) -> tuple:
    """The engine's (tokens, mask, log-probs) host arrays of each of `drawing`'s calls;
    `time/engine_wait` is how long the trainer waited for them (in its own process: after the
    update, so 0 when sampling took no longer), `time/engine_rollout` how long the engine took."""
    started = time.perf_counter()
    responses, seconds = zip(*(self.engine.receive(call) for call in drawing.calls))
    self.metrics.update({"time/engine_wait": time.perf_counter() - started, "time/engine_rollout": sum(seconds)})
    return responses

  def assembled(self, state, prompts, prompt_mask, responses: list) -> rl_steps.Sampled:
    """The `Sampled` of the responses (device arrays by RESPONSE_FIELDS), ReMax's greedy ones second."""
    sampled, *greedy = (self.assemble(state, prompts, prompt_mask, *(r[f] for f in RESPONSE_FIELDS))
                        for r in responses)
    return sampled._replace(greedy=greedy[0]) if greedy else sampled

  def in_flight(self, view, prompts, prompt_mask):
    """An off-policy rollout (off_policy.py): its InFlight, or with the engine in its own
    process its Drawing, which `finish` turns into one after the update."""
    drawing = self.submit(view, prompts, prompt_mask)
    if self.overlaps:
      return dataclasses.replace(drawing, policy=self.copy(view.policy))
    return self.finish(drawing, view)

  def finish(self, drawing: Drawing, state) -> off_policy.InFlight:
    """The rollout's `Sampled` and its log-prob check under the params that sampled it (the
    engine's copy of the policy), on `state`'s frozen parts."""
    view = state if drawing.policy is None else off_policy.sampler_fields(state).replace(policy=drawing.policy)
    if self.overlaps:  # the update first: `time/engine_wait` is then what the engine adds to it
      jax.block_until_ready(state.policy)
    sampled = self.sampled(drawing, view)
    return off_policy.InFlight(sampled, self.gap(view, sampled))

  def close(self) -> None:
    """Stops the engine's own process; the in-process engine stays for later runs in this
    process (vllm_engine.shared_engine)."""
    if self.overlaps:
      self.engine.close()

  def sync(self, state, seed: int = 0) -> dict:
    """Pushes the state's policy to the engine unless it holds it already; the push's metrics.
    Vmapped seeds share the step: the seed tells their policies apart."""
    wanted = (int(jax.device_get(state.step)), seed)
    if wanted == self.held_policy:
      return {}
    metrics = push_policy(self.engine, policy_params(state), self.model_cfg, adapters=self.adapters,
                          holds_base=self.held_policy is not None)
    self.held_policy = wanted
    return metrics

  def take_metrics(self) -> dict:
    metrics, self.metrics = self.metrics, {}
    return metrics


@dataclasses.dataclass
class EngineTurnSampler:
  """turn_cache.TurnSampler's interface over an external engine, for multi-turn rollouts:
  `session(params, settings, rows)` pushes `params` (`push_policy`) and gives roll_out its
  `sample(contexts, live, key)`: each live row's next turn from its whole context so far, token
  ids in and out (vLLM's prefix cache keeps a turn from prefilling what it has seen)."""
  engine: object  # vllm_engine.VLLMEngine
  model_cfg: ModelConfig
  turn_tokens: int
  stop_ids: tuple  # the ids that end a turn, EOS first
  pad_id: int
  adapters: bool = False  # a LoRA policy's adapters pushed as vLLM adapters (push_policy)
  holds_base: bool = False  # with `adapters`: the engine holds the policy's base (pushed once)

  def session(self, params, settings, rows: int):
    del rows
    push_policy(self.engine, params, self.model_cfg, adapters=self.adapters, holds_base=self.holds_base)
    self.holds_base = True
    temperature = float(settings.temperature)
    return functools.partial(self._turn, temperature=temperature)

  def _turn(self, contexts: list, live, key, *, temperature: float) -> SampleOutput:
    live = np.flatnonzero(np.asarray(live, bool))
    seeds = np.asarray(jax.random.randint(key, (len(contexts),), 0, 2**31 - 1))  # each row's, in any batch
    tokens, mask, logprobs = (np.zeros((len(contexts), self.turn_tokens), t) for t in (np.int32, np.int32, np.float32))
    tokens[:] = self.pad_id
    if len(live):
      drawn = self.engine.sample([contexts[i] for i in live], seeds[live], max_new_tokens=self.turn_tokens,
                                 stop_ids=self.stop_ids, pad_id=self.pad_id, temperature=temperature)
      for array, part in zip((tokens, mask, logprobs), drawn):
        array[live] = part
    self.engine.rest()
    return SampleOutput(tokens, logprobs, mask)


def start(cfg, run_dir, state, models, tokenizer, prompt_len: int, rl_cfg: RLConfig, mesh, rules,
          score_fn) -> EngineSampler:
  """The engine started on the policy's Hugging Face config alone (`run_dir`/engine_policy, no
  weights written: vLLM starts with placeholder weights and the first rollout pushes the
  policy's), in this process or, with `rollout.devices` > 0, in its own on those devices; and its
  sampler's compiled parts."""
  model_cfg = models.policy.cfg
  process = jax.process_index()  # each process's engine reads its own copy (none writes another's)
  directory = run_dir.file("engine_policy" + (f"_process_{process}" if process else ""))
  hf_export.export_config_only(dataclasses.replace(model_cfg, lora_rank=0, heads=()), tokenizer, directory)
  turn = cfg.env.turn_tokens if rl_plan.multi_turn(cfg) else 0  # a multi-turn context: then one more turn
  max_len = min(model_cfg.max_len, prompt_len + rl_cfg.max_new_tokens + turn)
  settings, own_process = vllm_engine.settings_of(cfg), cfg.rollout.devices > 0
  adapters = settings.lora_adapters and model_cfg.lora_rank > 0
  if adapters:  # a projection vLLM's adapters cannot sit on: refused now, before any training
    vllm_lora.adapter_tensors(policy_params(seeds.unstack(state, 0) if cfg.vmap_seeds > 1 else state), model_cfg)
  lora_rank = model_cfg.lora_rank if adapters else 0
  engine = (vllm_process.EngineProcess(directory, max_len=max_len, settings=settings, lora_rank=lora_rank,
                                       where=vllm_process.placement(cfg.rollout.devices)) if own_process else
            vllm_engine.shared_engine(directory, max_len=max_len, settings=settings, lora_rank=lora_rank))
  gap = functools.partial(off_policy.logprob_gap, policy=models.policy, cfg=rl_cfg)
  return EngineSampler(
      engine=engine, model_cfg=model_cfg, cfg=rl_cfg,
      sampling=dict(temperature=rl_cfg.temperature, top_k=cfg.sample.top_k, top_p=cfg.sample.top_p),
      assemble=compiled_assemble(state, mesh, rules, functools.partial(assemble, score_fn=score_fn, cfg=rl_cfg),
                                 cfg.vmap_seeds),
      seeds=jax.jit(functools.partial(response_seeds, rows=cfg.data.batch_size + rl_cfg.oversample *
                                      rl_cfg.samples_per_prompt), out_shardings=sharding.batch_sharding(mesh)),
      mesh=mesh, vmap_seeds=cfg.vmap_seeds,
      gap=jax.jit(sharding.with_rules(lambda view, sampled: gap(policy_params(view), sampled), mesh, rules),
                  out_shardings=sharding.replicated(mesh)),
      copy=jax.jit(lambda params: jax.tree.map(jnp.copy, params)), overlaps=own_process, adapters=adapters)


def compiled_assemble(state, mesh, rules, assemble_fn, vmap_seeds: int):
  """`assemble_fn` compiled, its `Sampled` split over the data axes; with vmapped seeds, vmapped
  over the state's seed axis and the engine's arrays' ([seed, row, ...]), the prompts shared."""
  rows = sharding.batch_sharding(mesh)
  if vmap_seeds > 1:
    assemble_fn = jax.vmap(assemble_fn, in_axes=(seeds.state_axes(state), None, None, 0, 0, 0))
    rows = host_rewards.seed_rows(mesh)
  return jax.jit(sharding.with_rules(assemble_fn, mesh, rules), out_shardings=rows)
