"""The benchmark workloads, built from the production code paths: the same state placement,
the same compiled steps (`compile_iteration`, `jit_steps`), the same sampler.

Each builder returns a `Workload`: one call of `step` runs one iteration or optimizer step
(and returns arrays to wait on), `flops` counts its model FLOPs (rlhf_jax/flops.py), and
`parts` are pieces of it timed on their own (PPO's generation). Weights are random: time
does not depend on them. No row ever stops early (EOS id -1 matches nothing), so every
response is exactly `new_tokens` long, as in the peer's workloads.
"""

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import limits
from rlhf_jax import flops, memory
from configs import common, dpo, pretrain, ppo, reward
from rlhf_jax import rewards, rl_plan, sharding
from rlhf_jax.data.prompts import Prompts
from rlhf_jax.data.tokenizers import ByteTokenizer
from rlhf_jax.models.config import ModelConfig
from rlhf_jax.models.continuous import generate, sampler_cache
from rlhf_jax.models.sampling import SampleOutput, SamplingParams, sample
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.core import setup
from rlhf_jax.training.core.optim import learning_rate_schedule, make_optimizer
from rlhf_jax.training.core.steps import eval_step, jit_steps, train_step
from rlhf_jax.training.policy import frozen
from rlhf_jax.training.preference.dpo_steps import compile_dpo_steps
from rlhf_jax.training.preference.reward_steps import reward_eval_step, reward_train_step
from rlhf_jax.training.rl import rl_setup, rl_state, rl_trainer
from rlhf_jax.training.rl.host_rewards import compile_host_iteration
from rlhf_jax.training.rl.off_policy import compile_off_policy
from rlhf_jax.training.rl.rl_steps import RLConfig, Sampled, reuses_scoring_pass, update_phase

# The fixed model: GPT-2 blocks (learned positions), 4 layers, d_model 128, 4 heads, vocab 256.
TINY_GPT2 = dict(common.GPT2_BLOCK, vocab_size=256, d_model=128, n_layers=4, n_heads=4, d_ff=512, max_len=128)
NEVER = (-1,)  # stop ids no token matches: every response runs to its full length


@dataclasses.dataclass
class Workload:
  step: Callable[[], Any]
  flops: float
  info: dict
  parts: dict = dataclasses.field(default_factory=dict)  # name -> (call, flops)
  compiled: Callable | None = None  # the jitted step, to count its compilations
  model_cfg: ModelConfig | None = None  # the sampler's model, for the decode roofline


def preset_model(preset: str) -> dict | None:
  """A preset's model as is, but with a fixed vocabulary where it would take the tokenizer's."""
  return {"vocab_size": 256} if common.MODELS[preset]["vocab_size"] == 0 else None


def stage_config(module, preset: str, model: dict | None):
  cfg = module.get_config(preset)
  if model is not None:
    cfg.model.update(model)
  return cfg


def random_tokens(seed: int, shape, vocab: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(1, vocab, shape).astype(np.int32)


def stateful(compiled, state, *args) -> Callable:
  """A step that feeds the donated state back in: each call is one more update."""
  holder = {"state": state}

  def step():
    holder["state"], metrics = compiled(holder["state"], *args)
    return metrics

  step.state = lambda: holder["state"]
  step.set_state = lambda state: holder.update(state=state)
  return step


def distinct_words(prompts, completions, **unused) -> list:
  """A host reward of the kind users write: plain Python over the decoded text."""
  return [len(set(c.split())) / 10 for c in completions]


def rl_workload(algo: str, preset: str = "tiny", model: dict | None = TINY_GPT2, prompts: int = 64,
                prompt_len: int = 16, new_tokens: int = 32, k: int = 1, epochs: int = 4,
                minibatches: int = 1, host_reward: Callable | None = None) -> Workload:
  """One RL iteration (W1 PPO, W4 RLOO/GRPO): sample, score with policy, reference, reward
  model (and PPO's critic), then `epochs` x `minibatches` updates. With `host_reward` (W5) the
  reward model's score plus that function's on the decoded text: rollout -> host -> update."""
  cfg = stage_config(ppo, preset, model)
  cfg.algo, cfg.data.batch_size, cfg.sample.max_new_tokens = algo, prompts * k, new_tokens
  cfg.rl.update(dict(samples_per_prompt=k, epochs=epochs, minibatches=minibatches))
  host = [rewards.HostReward("host", host_reward, 1.0)] if host_reward else []
  plan = rl_plan.resolve(cfg)
  rl_cfg = RLConfig(max_new_tokens=new_tokens, stop_ids=NEVER, pad_id=0, algo=algo, temperature=cfg.sample.temperature,
                    host_rewards=tuple(h.name for h in host), **{**plan.fields, "penalise_no_eos": False})
  policy_cfg = ModelConfig.from_dict(dict(cfg.model))
  models = rl_setup.make_models(plan, policy_cfg, dataclasses.replace(policy_cfg, heads=("reward",)))
  named = {"policy": models.policy, "reward": models.scorer, **({"value": models.critic} if models.critic else {})}
  policy_tx, value_tx = rl_setup.make_optimizers(cfg, plan)
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules_of(cfg)
  state, shardings = rl_state.place_state(named, policy_tx, value_tx, mesh, rules, cfg.seed, plan.kl_coef)
  score_fn = functools.partial(frozen.proxy_scores, scorer=models.scorer, gain=1.0, bias=0.0)
  tokens = random_tokens(0, (prompts, prompt_len), policy_cfg.vocab_size)
  batch = sharding.put_batch({"tokens": tokens, "mask": np.ones((prompts, prompt_len), np.int32)}, mesh)
  if host:
    texts = [ByteTokenizer().decode(row) for row in tokens]
    iteration = compile_host_iteration(shardings, mesh, rules, models, policy_tx, value_tx, score_fn, rl_cfg,
                                       host=host, with_model=True, prompts=Prompts(texts, tokens, batch["mask"]),
                                       tokenizer=ByteTokenizer())
    step = stateful(iteration, state, {**batch, "ids": np.arange(prompts)})
  else:
    iteration = rl_trainer.compile_iteration(shardings, mesh, rules, models, policy_tx, value_tx, score_fn, rl_cfg,
                                             vmapped=False)
    step = stateful(iteration, state, batch["tokens"], batch["mask"])
  rows, critic = prompts * k, models.critic is not None
  total = flops.rl_iteration(policy_cfg, rows, prompt_len, new_tokens, rl_cfg.epochs, critic=critic,
                             reused_scoring=reuses_scoring_pass(rl_cfg))
  generation = (rollout_sampling(models.policy, step, batch, k, rl_cfg, mesh, rules),
                flops.generate(policy_cfg, rows, prompt_len, new_tokens))
  info = dict(algo=algo, rows=rows, prompt_len=prompt_len, new_tokens=new_tokens, epochs=rl_cfg.epochs,
              minibatches=rl_cfg.minibatches, k=k)
  return Workload(step, total, info, {"generation": generation}, iteration.update if host else iteration)


def off_policy_workload(k: int, prompts: int = 64, prompt_len: int = 16, new_tokens: int = 256) -> Workload:
  """W6 (k = 1) and its synchronous baseline (k = 0): PPO with long generations. Synchronous,
  one iteration on every device; off-policy, the sampler on the last device and the trainer
  on the others, the next rollout sampled while this one trains. Parts: the rollout (sampling,
  scoring and the log-prob check) and the update on their own devices, one at a time."""
  cfg = stage_config(ppo, "tiny", {**TINY_GPT2, "max_len": prompt_len + new_tokens})
  cfg.data.batch_size, cfg.sample.max_new_tokens = prompts, new_tokens
  cfg.rl.update(dict(epochs=4, minibatches=1, off_policy_steps=k))
  cfg.rollout.devices = 1 if k else 0
  plan = rl_plan.resolve(cfg)
  rl_cfg = RLConfig(max_new_tokens=new_tokens, stop_ids=NEVER, pad_id=0, algo="ppo", temperature=cfg.sample.temperature,
                    **{**plan.fields, "penalise_no_eos": False})
  policy_cfg = ModelConfig.from_dict(dict(cfg.model))
  models = rl_setup.make_models(plan, policy_cfg, dataclasses.replace(policy_cfg, heads=("reward",)))
  named = {"policy": models.policy, "reward": models.scorer, "value": models.critic}
  policy_tx, value_tx = rl_setup.make_optimizers(cfg, plan)
  (mesh, sample_mesh), rules = rl_setup.meshes(cfg), sharding.rules_of(cfg)
  state, shardings = rl_state.place_state(named, policy_tx, value_tx, mesh, rules, cfg.seed, plan.kl_coef)
  score_fn = functools.partial(frozen.proxy_scores, scorer=models.scorer, gain=1.0, bias=0.0)
  tokens = random_tokens(0, (prompts, prompt_len), policy_cfg.vocab_size)
  batch = sharding.put_batch({"tokens": tokens, "mask": np.ones((prompts, prompt_len), np.int32)}, sample_mesh)
  info = dict(algo="ppo", rows=prompts, prompt_len=prompt_len, new_tokens=new_tokens, epochs=4, off_policy_steps=k,
              rollout_devices=cfg.rollout.devices, train_devices=mesh.size)
  total = flops.rl_iteration(policy_cfg, prompts, prompt_len, new_tokens, 4, critic=True, off_policy=k > 0,
                             reused_scoring=reuses_scoring_pass(rl_cfg))
  if not k:
    iteration = rl_trainer.compile_iteration(shardings, mesh, rules, models, policy_tx, value_tx, score_fn, rl_cfg,
                                             vmapped=False)
    return Workload(stateful(iteration, state, batch["tokens"], batch["mask"]), total, info, {}, iteration)
  driver, state, _ = compile_off_policy(state, shardings, mesh, sample_mesh, rules, models, policy_tx, value_tx,
                                        score_fn, rl_cfg, (batch["tokens"], batch["mask"]))
  step = stateful(driver, driver.prefill(state, [batch] * k), batch)

  def update():  # the update alone, on the trainer's devices, its state fed back
    state, metrics = driver.train(step.state())
    step.set_state(state)
    return metrics
  rollout = lambda: driver.sample(driver.view(step.state()), batch["tokens"], batch["mask"])
  return Workload(step, total, info, {"rollout": (rollout, 0.0), "update": (update, 0.0)}, driver.train)


def rollout_sampling(policy, step, batch, k: int, rl_cfg: RLConfig, mesh, rules) -> Callable:
  """The rollout's sampling on its own: the current params, the same k-repeated prompts, the
  same program (to time generation's share of the iteration)."""
  fn = functools.partial(sample, policy, max_new_tokens=rl_cfg.max_new_tokens, stop_ids=NEVER, pad_id=0)
  sampler = jax.jit(sharding.with_rules(fn, mesh, rules))
  repeated = [jnp.repeat(x, k, axis=0) for x in (batch["tokens"], batch["mask"])]
  settings = SamplingParams.make(rl_cfg.temperature)
  return lambda: sampler(step.state().policy, *repeated, jax.random.key(1), settings).tokens


def sampler_workload(preset: str = "tiny", model: dict | None = TINY_GPT2, rows: int = 64, prompt_len: int = 16,
                     new_tokens: int = 32) -> Workload:
  """KV-cache generation of exactly `new_tokens` per row, temperature 0.7."""
  cfg = stage_config(pretrain, preset, model)
  model_ = Transformer(ModelConfig.from_dict(dict(cfg.model)))
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules_of(cfg)
  state, _ = setup.init_state(model_, make_optimizer(cfg.optim, 10), mesh, rules, cfg.seed)
  fn = functools.partial(sample, model_, max_new_tokens=new_tokens, stop_ids=NEVER, pad_id=0)
  sampler = jax.jit(sharding.with_rules(fn, mesh, rules))
  prompts = jnp.asarray(random_tokens(1, (rows, prompt_len), model_.cfg.vocab_size))
  mask = jnp.ones((rows, prompt_len), jnp.int32)
  settings = SamplingParams.make(temperature=0.7)
  step = lambda: sampler(state.params, prompts, mask, jax.random.key(0), settings).tokens
  info = dict(rows=rows, prompt_len=prompt_len, new_tokens=new_tokens, generated_tokens=rows * new_tokens)
  return Workload(step, flops.generate(model_.cfg, rows, prompt_len, new_tokens), info, compiled=sampler,
                  model_cfg=model_.cfg)


def read_lengths(path: str) -> list[int]:
  """A response-length file (benchmarks/lengths.py): one integer >= 1 a line."""
  with open(path, encoding="utf-8") as f:
    lengths = [int(line) for line in f if line.strip()]
  if not lengths or min(lengths) < 1:
    raise SystemExit(f"--lengths={path}: one integer >= 1 a line")
  return lengths


def rollout_workload(lengths: list[int], preset: str = "tiny", model: dict | None = None, prompt_len: int = 16,
                     budget: int = 0, slots: int = 0, paged: bool = False, cache_blocks: int = 0,
                     block_size: int = 16, paged_attention: str = "xla") -> Workload:
  """One rollout of len(lengths) responses, row i stopping after lengths[i] tokens (`stop_at`),
  within a budget of `budget` new tokens (default: the longest). `slots` 0: the static sampler
  decodes every row until the longest is done, its KV cache sized rows x (prompt + budget);
  else continuous batching, that many slots decoding at a time, its cache slots x (prompt +
  budget), or with `paged` a pool of `cache_blocks` blocks (0: continuous.paged_blocks)."""
  cfg = stage_config(pretrain, preset, model)
  model_ = Transformer(ModelConfig.from_dict(dict(cfg.model)))
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules_of(cfg)
  state, _ = setup.init_state(model_, make_optimizer(cfg.optim, 10), mesh, rules, cfg.seed)
  rows, budget = len(lengths), budget or max(lengths)
  batching = dict(batching="paged" if paged else "continuous" if slots else "static", slots=slots,
                  cache_blocks=cache_blocks, block_size=block_size, paged_attention=paged_attention)
  fn = functools.partial(generate, model_, max_new_tokens=budget, stop_ids=NEVER, pad_id=0, **batching)
  sampler = jax.jit(sharding.with_rules(fn, mesh, rules))
  batch = sharding.put_batch({"prompts": random_tokens(1, (rows, prompt_len), model_.cfg.vocab_size),
                              "mask": np.ones((rows, prompt_len), np.int32),
                              "stop_at": np.asarray(lengths, np.int32)}, mesh)
  settings = SamplingParams.make(temperature=0.7)
  step = lambda: sampler(state.params, batch["prompts"], batch["mask"], jax.random.key(0), settings,
                         stop_at=batch["stop_at"]).tokens
  cache_rows, cache_length, cache_what = sampler_cache(rows, prompt_len + budget, **batching)
  cache = memory.kv_cache_bytes(model_.cfg, cache_rows, cache_length, rules, dict(mesh.shape))
  info = dict(batching=batching["batching"], rows=rows, slots=slots or rows, cache=cache_what, prompt_len=prompt_len,
              budget=budget, generated_tokens=int(sum(lengths)), mean_length=float(np.mean(lengths)),
              max_length=max(lengths), peak_cache_bytes=cache,
              floor_bytes=limits.rollout_floor_bytes(model_.cfg, lengths, prompt_len, slots or rows))
  if not slots:
    info["decode_steps"] = -(-max(lengths) // 8) * 8  # the loop asks whether every row is done every 8 steps
  real_flops = sum(flops.generate(model_.cfg, 1, prompt_len, n) for n in lengths)  # the padding's left out
  return Workload(step, real_flops, info, compiled=sampler, model_cfg=model_.cfg)


def vllm_rollout_workload(lengths: list[int], preset: str = "tiny", model: dict | None = None, prompt_len: int = 16,
                          budget: int = 0, directory: str = "") -> Workload:
  """`rollout_workload`'s rollout (the same model, prompts and lengths) drawn by vLLM's engine
  in this process (rollout.engine=vllm): started on the model's config in `directory`, its
  params pushed as the RL stage pushes them."""
  from rlhf_jax.interop import hf_export, vllm_engine  # pylint: disable=g-import-not-at-top
  cfg = stage_config(pretrain, preset, model)
  rows, budget = len(lengths), budget or max(lengths)
  # vLLM refuses positions past the config's (ours, with rotary positions, has no such limit).
  cfg.model.max_len = max(cfg.model.max_len, prompt_len + budget)
  model_ = Transformer(ModelConfig.from_dict(dict(cfg.model)))
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules_of(cfg)
  state, _ = setup.init_state(model_, make_optimizer(cfg.optim, 10), mesh, rules, cfg.seed)
  hf_export.export_config_only(model_.cfg, ByteTokenizer(), directory)
  settings = dataclasses.replace(vllm_engine.settings_of(stage_config(ppo, preset, model)), kv_cache_gib=2.0)
  engine = vllm_engine.VLLMEngine(directory, max_len=prompt_len + budget, seed=0, settings=settings)
  engine.push(state.params, model_.cfg)
  prompts = random_tokens(1, (rows, prompt_len), model_.cfg.vocab_size).tolist()
  step = lambda: engine.sample(prompts, range(rows), max_new_tokens=budget, stop_ids=NEVER, pad_id=0,
                               temperature=0.7, stop_at=lengths)[0]
  info = dict(engine="vllm", rows=rows, prompt_len=prompt_len, budget=budget, generated_tokens=int(sum(lengths)),
              mean_length=float(np.mean(lengths)), max_length=max(lengths))
  return Workload(step, sum(flops.generate(model_.cfg, 1, prompt_len, n) for n in lengths), info,
                  model_cfg=model_.cfg)


def update_workload(lengths: list[int], preset: str = "tiny", model: dict | None = None, prompt_len: int = 16,
                    budget: int = 0, packing: bool = False, pack_rows: int = 0, algo: str = "grpo",
                    k: int = 4) -> Workload:
  """The RL iteration's update half (rl_steps.update_phase: the scoring pass, advantages, one
  epoch's update and the KL controller, GRPO with k samples a prompt) on a rollout of
  len(lengths) responses, response i lengths[i] tokens of a `budget` (default: the longest),
  padded or packed (rl.packing). FLOPs: the update's on the real tokens alone."""
  cfg = stage_config(ppo, preset, model)
  rows, budget = len(lengths), budget or max(lengths)
  cfg.algo, cfg.data.batch_size, cfg.sample.max_new_tokens = algo, rows, budget
  cfg.rl.update(dict(samples_per_prompt=k, epochs=1, minibatches=1, packing=packing, pack_rows=pack_rows))
  plan = rl_plan.resolve(cfg)
  rl_cfg = RLConfig(max_new_tokens=budget, stop_ids=NEVER, pad_id=0, algo=algo, temperature=cfg.sample.temperature,
                    **{**plan.fields, "penalise_no_eos": False})
  policy_cfg = ModelConfig.from_dict(dict(cfg.model))
  models = rl_setup.make_models(plan, policy_cfg, None)
  policy_tx, value_tx = rl_setup.make_optimizers(cfg, plan)
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules_of(cfg)
  named = {"policy": models.policy, **({"value": models.critic} if models.critic else {})}
  state, shardings = rl_state.place_state(named, policy_tx, value_tx, mesh, rules, cfg.seed, plan.kl_coef)
  update = jax.jit(sharding.with_rules(functools.partial(
      update_phase, policy=models.policy, critic=models.critic, policy_tx=policy_tx, value_tx=value_tx, cfg=rl_cfg),
      mesh, rules), out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  step = stateful(update, state, replayed_rollout(lengths, prompt_len, budget, policy_cfg.vocab_size, mesh))
  info = dict(algo=algo, packing=packing, rows=rows, pack_rows=rl_cfg.packed_rows(rows) if packing else 0,
              prompt_len=prompt_len, budget=budget, mean_length=float(np.mean(lengths)), max_length=max(lengths),
              real_token_fraction=float(np.sum(np.asarray(lengths) + prompt_len) / (rows * (prompt_len + budget))))
  real_flops = sum(flops.rl_iteration(policy_cfg, 1, prompt_len, n, 1, critic=models.critic is not None,
                                      reward_model=False, reused_scoring=reuses_scoring_pass(rl_cfg))
                   - flops.generate(policy_cfg, 1, prompt_len, n) for n in lengths)
  return Workload(step, real_flops, info, compiled=update, model_cfg=policy_cfg)


def replayed_rollout(lengths: list[int], prompt_len: int, budget: int, vocab: int, mesh) -> Sampled:
  """A sampled rollout (random tokens and scores) whose response i is lengths[i] tokens long."""
  rows = len(lengths)
  response_mask = (np.arange(budget) < np.asarray(lengths)[:, None]).astype(np.int32)
  tokens = random_tokens(2, (rows, prompt_len + budget), vocab)
  fields = sharding.put_batch({"tokens": tokens, "mask": np.concatenate([np.ones((rows, prompt_len), np.int32),
                                                                         response_mask], axis=1),
                               "response": tokens[:, prompt_len:], "response_mask": response_mask,
                               "scores": np.random.default_rng(3).normal(size=rows).astype(np.float32)}, mesh)
  response = SampleOutput(fields["response"], jnp.zeros((rows, budget), jnp.float32), fields["response_mask"])
  return Sampled(fields["tokens"], fields["mask"], response, jnp.ones(rows, bool), fields["scores"])


def lm_workload(preset: str = "gpt2_small", model: dict | None = None, rows: int = 0, length: int = 0) -> Workload:
  """One pretraining step (forward, backward, AdamW) on [rows, length] tokens."""
  cfg = stage_config(pretrain, preset, model)
  rows, length = rows or cfg.data.batch_size, length or cfg.data.seq_len
  model_ = Transformer(ModelConfig.from_dict(dict(cfg.model)))
  tx, schedule = make_optimizer(cfg.optim, 1000), learning_rate_schedule(cfg.optim, 1000)
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules_of(cfg)
  state, shardings = setup.init_state(model_, tx, mesh, rules, cfg.seed)
  train_fn = functools.partial(train_step, model=model_, tx=tx, schedule=schedule, accum_steps=1, seed=0)
  train, _ = jit_steps(train_fn, functools.partial(eval_step, model=model_), shardings, mesh, rules)
  tokens = random_tokens(0, (rows, length + 1), model_.cfg.vocab_size)
  ones = np.ones((rows, length), np.int32)
  batch = sharding.put_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": ones, "loss_mask": ones},
                             mesh)
  info = dict(rows=rows, length=length, tokens=rows * length, params_m=model_.cfg.num_params() / 1e6)
  return Workload(stateful(train, state, batch), flops.train(model_.cfg, rows, length), info, compiled=train)


def reward_workload(preset: str = "tiny", model: dict | None = TINY_GPT2, pairs: int = 64,
                    length: int = 48) -> Workload:
  """W3: one Bradley-Terry step on `pairs` chosen/rejected sequences of `length` tokens."""
  cfg = stage_config(reward, preset, model)
  model_ = Transformer(dataclasses.replace(ModelConfig.from_dict(dict(cfg.model)), heads=("reward",)))
  tx, schedule = make_optimizer(cfg.optim, 1000), learning_rate_schedule(cfg.optim, 1000)
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules_of(cfg)
  state, shardings = setup.init_state(model_, tx, mesh, rules, cfg.seed)
  train_fn = functools.partial(reward_train_step, model=model_, tx=tx, schedule=schedule, accum_steps=1)
  train, _ = jit_steps(train_fn, functools.partial(reward_eval_step, model=model_), shardings, mesh, rules)
  ones = np.ones((pairs, length), np.int32)
  batch = sharding.put_batch({"chosen": random_tokens(0, (pairs, length), model_.cfg.vocab_size), "chosen_mask": ones,
                              "rejected": random_tokens(1, (pairs, length), model_.cfg.vocab_size),
                              "rejected_mask": ones, "loss_mask": np.ones((pairs, 1), np.int32)}, mesh)
  return Workload(stateful(train, state, batch), flops.reward_step(model_.cfg, pairs, length),
                  dict(pairs=pairs, length=length), compiled=train)


def dpo_workload(preset: str = "tiny", model: dict | None = TINY_GPT2, pairs: int = 64, prompt_len: int = 16,
                 response_len: int = 32, share_prompt: bool = False) -> Workload:
  """W2: one DPO step: the frozen reference's and the policy's log-probs of chosen and
  rejected (prompt + response), the loss on the responses, AdamW. With `share_prompt`, each
  pair in one row holding its prompt once (`data.share_prompt`'s layout: `shared_pair_rows`)."""
  cfg = stage_config(dpo, preset, model)
  policy = Transformer(ModelConfig.from_dict(dict(cfg.model)))
  tx = make_optimizer(cfg.optim, 1000)
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules_of(cfg)
  # DPO's state has no use for a reward model: the policy's shape stands in for it.
  named = {"policy": policy, "reward": policy}
  state, shardings = rl_state.place_state(named, tx, None, mesh, rules, cfg.seed, 0.0)
  train, _ = compile_dpo_steps(policy, tx, cfg, shardings, mesh)
  length = prompt_len + response_len
  ones = np.ones((pairs, length), np.int32)
  response = (np.arange(length) >= prompt_len)[None].repeat(pairs, 0).astype(np.int32)
  batch = {"loss_mask": np.ones((pairs, 1), np.int32)}
  for i, name in enumerate(("chosen", "rejected")):
    tokens = random_tokens(i, (pairs, length), policy.cfg.vocab_size)
    tokens[:, :prompt_len] = random_tokens(2, (pairs, prompt_len), policy.cfg.vocab_size)  # one shared prompt
    batch.update({name: tokens, f"{name}_mask": ones, f"{name}_response": response})
  info = dict(pairs=pairs, prompt_len=prompt_len, response_len=response_len)
  total = flops.dpo_step(policy.cfg, pairs, length)
  if share_prompt:
    batch = shared_pair_rows(batch, prompt_len)
    rows, width = batch["tokens"].shape
    total = flops.forward(policy.cfg, rows, width) + flops.train(policy.cfg, rows, width)
    info.update(share_prompt=True, row_tokens=width)
  return Workload(stateful(train, state, sharding.put_batch(batch, mesh)), total, info, compiled=train)


def shared_pair_rows(batch: dict, prompt_len: int) -> dict:
  """One pair per row as `data.share_prompt` packs it (data/batches.py): the prompt but its last
  token, then that token and the chosen response, then that token and the rejected response
  (which attends to the chosen one's prompt and continues its positions)."""
  chosen, rejected, keep = batch["chosen"], batch["rejected"], prompt_len - 1
  pairs, length = chosen.shape
  tokens = np.concatenate([chosen, rejected[:, keep:]], axis=1)
  second = np.arange(tokens.shape[1]) >= length  # the rejected sequence's tokens
  row = lambda a: np.broadcast_to(a, tokens.shape).astype(np.int32)
  positions = np.concatenate([np.arange(length), np.arange(keep, length)])
  return {"tokens": tokens, "mask": row(1), "segments": row(1 + second), "shared": row(np.arange(len(second)) < keep),
          "positions": row(positions), "response": row(positions >= prompt_len), "loss_mask": batch["loss_mask"]}
