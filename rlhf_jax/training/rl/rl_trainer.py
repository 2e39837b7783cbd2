"""The RL stage (every algorithm; `ppo` was its name): policy from the SFT run, rewards as
`config.reward` says (rewards.py), PPO's critic from the reward run or the SFT run.

The policy and the frozen reference both start as the SFT params. `algo` picks PPO or a
critic-free method (see rl_steps). For PPO, `critic` picks the value function: "reward" a
separate model started from the reward model, its reward head becoming the value head; "sft"
a separate model started from the SFT policy with a fresh value head; "shared" a value head
on the policy backbone; "auto" (default) "reward" when the reward model is a reward component,
else "sft". The reward model, when `reward.fns` names it, scores responses normalised by the
gain and bias the reward stage measured on SFT samples; without it no reward model is built,
loaded or held. With in-graph rewards only, each iteration is one compiled `rl_iteration`;
with host reward functions it is rollout -> host scoring -> update (host_rewards.py); with an
environment (`config.env`) the policy's and the environment's turns on the host, then the
same update (multi_turn.py). Which one runs is the plan's `driver` (rl_plan.py).
Evaluation compares the policy with the reference on held-out prompts by the gold judge, the
reward (each component and their sum) and the KL between them.
"""

import contextlib
import dataclasses
import functools

import jax
import optax

from rlhf_jax import flops, memory, pairwise_judge, rewards, rl_plan, sharding
from rlhf_jax.algorithms.advantages import ADVANTAGES
from rlhf_jax.algorithms.importance import IS_CORRECTIONS
from rlhf_jax.algorithms.rollout_correction import ROLLOUT_CORRECTIONS
from rlhf_jax.data import sources
from rlhf_jax.data.prompts import prompt_batch, prompt_set, warn_about_prompt_sets
from rlhf_jax.envs import environments
from rlhf_jax.errors import UserError
from rlhf_jax.interop import vllm_process
from rlhf_jax.metrics_log import MetricsLog
from rlhf_jax.models.config import LORA_FIELDS, ModelConfig
from rlhf_jax.models.continuous import batching_of
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.core import setup, trainer
from rlhf_jax.training.core.compute import StepCost
from rlhf_jax.training.core.loop import Loop
from rlhf_jax.training.core.optim import make_optimizer
from rlhf_jax.training.policy import frozen
from rlhf_jax.training.policy.policy_eval import PolicyEvaluator
from rlhf_jax.training.policy.policy_state import policy_params
from rlhf_jax.training.rl import engine_rollout, multi_turn, off_policy, rl_state, routing, seeds, turn_cache
from rlhf_jax.training.rl.host_rewards import HostScorer, compile_host_iteration
from rlhf_jax.training.rl.multi_turn_off_policy import compile_multi_turn_off_policy
from rlhf_jax.training.rl.off_policy import compile_off_policy
from rlhf_jax.training.rl.rl_steps import RLConfig, reuses_scoring_pass, rl_iteration
from rlhf_jax.workdir import RunDir

RL_ITEMS = ("policy", "policy_opt", "value", "value_opt", "kl", "baseline", "rng", "pending")


@dataclasses.dataclass
class Models:
  policy: Transformer
  critic: Transformer | None  # None: a value head on the policy backbone, or no critic
  scorer: Transformer | None  # the reward model, if it is a reward component


def check_config(cfg) -> None:
  """The RL fields that need no data, checked before any stage runs (on the resolved plan)."""
  plan = rl_plan.resolve(cfg)  # the algorithm and its parts' names are checked there
  rl = plan.fields
  k, estimator = rl["samples_per_prompt"], ADVANTAGES[rl["advantage"]]
  if k < estimator.min_group_size or (rl["dynamic_sampling"] and k < 2):
    raise UserError(f"algo={cfg.algo} (rl.advantage={rl['advantage']}) compares samples of one prompt: "
                    "rl.samples_per_prompt must be >= 2")
  if rl["oversample"] < 0 or (rl["oversample"] and not rl["dynamic_sampling"]):
    raise UserError(f"rl.oversample={rl['oversample']}: extra prompts (>= 0) refill what dynamic sampling "
                    "leaves out; it needs rl.dynamic_sampling=True (algo=dapo sets it)")
  if cfg.vmap_seeds < 1:
    raise UserError(f"vmap_seeds={cfg.vmap_seeds} must be >= 1")
  check_off_policy(cfg, plan)
  if plan.engine != "jax":
    engine_rollout.check_engine(cfg)
  if cfg.eval.get("judge_model"):
    pairwise_judge.check_source(cfg.eval.judge_model, "eval.judge_model")
  if plan.driver == "multi_turn":
    check_multi_turn(cfg, plan)
  if "format" in dict(plan.rewards.token) and not cfg.reward.get("format_text"):
    raise UserError("reward.fns names the token reward `format`: set reward.format_text to the text it looks for")
  if plan.rewards.host and cfg.vmap_seeds > 1 and jax.process_count() > 1:
    raise UserError("vmap_seeds > 1 with host reward functions runs on one process: run the seeds as separate "
                    "runs, or vmap_seeds=1")
  if plan.critic == "reward" and not plan.uses_reward_model:
    raise UserError("critic=reward starts the critic from the reward model, which reward.fns does not use: "
                    "set critic=sft (or auto)")
  per_update = rl["minibatches"] * rl["accum_steps"]
  if cfg.data.batch_size % k or cfg.data.batch_size % per_update:
    raise UserError(f"data.batch_size={cfg.data.batch_size} (responses) must be a multiple of "
                    f"rl.samples_per_prompt = {k} and of rl.minibatches x rl.accum_steps = {per_update}")


def check_off_policy(cfg, plan: rl_plan.RLPlan) -> None:
  rl, devices = plan.fields, cfg.rollout.devices
  k = rl["off_policy_steps"]
  if not isinstance(k, int) or k < 0:
    raise UserError(f"rl.off_policy_steps={k!r}: an integer >= 0 (0: synchronous)")
  if rl["is_correction"] not in IS_CORRECTIONS:
    raise UserError(f"rl.is_correction={rl['is_correction']!r}: choose one of {', '.join(IS_CORRECTIONS)}")
  if rl["rollout_correction"] not in ROLLOUT_CORRECTIONS:
    raise UserError(f"rl.rollout_correction={rl['rollout_correction']!r}: choose one of "
                    f"{', '.join(ROLLOUT_CORRECTIONS)}")
  low, high = rl["rollout_correction_bounds"]
  if not (rl["rollout_correction_cap"] >= 1.0 and 0.0 <= low <= 1.0 <= high):
    raise UserError(f"rl.rollout_correction_cap={rl['rollout_correction_cap']} must be >= 1 and "
                    f"rl.rollout_correction_bounds={tuple(rl['rollout_correction_bounds'])} hold 1 (0 <= low <= 1 <= high)")
  if rl["rollout_correction"] != "none" and rl["is_correction"] != "none":
    raise UserError("rl.rollout_correction and rl.is_correction both weight stale tokens: set one, the other none")
  if not rl["is_cap"] >= 1.0:
    raise UserError(f"rl.is_cap={rl['is_cap']}: the importance weight's cap must be >= 1")
  if devices < 0 or (devices and not k):
    raise UserError(f"rollout.devices={devices}: sampling on devices of its own needs rl.off_policy_steps >= 1 "
                    "(the sampler works ahead of the trainer); 0 keeps them colocated")
  if k and cfg.vmap_seeds > 1:
    raise UserError("rl.off_policy_steps >= 1 with vmap_seeds > 1 is not supported yet: run one seed per run, "
                    "or off_policy_steps=0")


def check_multi_turn(cfg, plan: rl_plan.RLPlan) -> None:
  """What multi-turn runs with, and its environment loaded now: a bad tool or class fails here,
  before any stage runs."""
  unsupported = ("vmap_seeds > 1" if cfg.vmap_seeds > 1 else
                 f"algo={cfg.algo}'s greedy baseline" if ADVANTAGES[plan.fields["advantage"]].needs_greedy else
                 "eval.k > 1 (one trajectory per held-out prompt)" if cfg.eval.k > 1 else
                 f"sample.batching={cfg.sample.batching} (a turn decodes only its live rows already: turn_cache.py)"
                 if cfg.sample.get("batching", "static") != "static" else "")
  if unsupported:
    raise UserError(f"config.env (multi-turn) with {unsupported} is not supported yet: the turns run on the host "
                    "between compiled updates; use reward functions (reward.fns) and one seed per run")
  if cfg.env.get("call_format", "auto") not in environments.CALL_FORMATS:
    raise UserError(f"env.call_format={cfg.env.call_format!r}: choose one of {', '.join(environments.CALL_FORMATS)}")
  if cfg.env.max_turns < 1 or cfg.env.turn_tokens < 1:
    raise UserError(f"env.max_turns={cfg.env.max_turns} and env.turn_tokens={cfg.env.turn_tokens} must be >= 1")
  environments.from_config(cfg.env)


def make_models(plan: rl_plan.RLPlan, policy_cfg: ModelConfig, reward_cfg: ModelConfig | None) -> Models:
  with_value = lambda c: dataclasses.replace(c, heads=("value",))
  scorer = Transformer(reward_cfg) if reward_cfg else None
  if plan.critic is None:
    return Models(Transformer(policy_cfg), None, scorer)
  if plan.critic == "shared":
    return Models(Transformer(with_value(policy_cfg)), None, scorer)
  critic_cfg = policy_cfg
  if plan.critic == "reward":  # the reward model's architecture, adapted as the policy is
    critic_cfg = dataclasses.replace(reward_cfg, **{k: getattr(policy_cfg, k) for k in LORA_FIELDS})
  return Models(Transformer(policy_cfg), Transformer(with_value(critic_cfg)), scorer)


def make_optimizers(cfg, plan: rl_plan.RLPlan):
  """(policy_tx, value_tx). Shared critic: one optimizer, the value head at the value lr."""
  policy_tx = make_optimizer(cfg.optim, cfg.train.num_steps)
  value_tx = make_optimizer(cfg.value_optim, cfg.train.num_steps)
  if plan.separate_critic:
    return policy_tx, value_tx
  if plan.critic is None:
    return policy_tx, None
  labels = lambda params: {k: "value" if k == "value_head" else "policy" for k in params}
  return optax.multi_transform({"policy": policy_tx, "value": value_tx}, labels), None


def run(cfg, workdir: str) -> dict:
  with contextlib.ExitStack() as cleanup:  # an engine's own process stops with the run, however it ends
    return run_with(cfg, workdir, cleanup)


def run_with(cfg, workdir: str, cleanup: contextlib.ExitStack) -> dict:
  run_dir = RunDir(workdir)
  plan = rl_plan.resolve(cfg)
  sft_run = setup.source_run(cfg)
  reward_run = frozen.reward_run_of(cfg) if plan.uses_reward_model else None
  if sft_run is None:
    raise UserError("the RL stage starts from an SFT run: set init_from (or keep config.upstream)")
  tokenizer = setup.prepare_tokenizer(cfg, run_dir, sft_run)
  reward_cfg = setup.frozen_model_config(reward_run) if reward_run else None
  models = make_models(plan, setup.model_config(cfg, tokenizer, sft_run), reward_cfg)
  routing.check(cfg, plan, models.policy.cfg)  # the SFT run's architecture: an MoE policy or not
  (mesh, sample_mesh), rules = meshes(cfg), sharding.rules_of(cfg)
  memory.check(cfg, models.policy.cfg, mesh, rl=plan)
  prompts = {split: prompt_set(cfg, tokenizer, split, listed_tools(cfg, plan)) for split in ("train", "eval")}
  seed_cfgs = [with_seed(cfg, cfg.seed + i) for i in range(cfg.vmap_seeds)]
  seed_dirs = [RunDir(run_dir.file(f"seed_{c.seed}")) for c in seed_cfgs] if len(seed_cfgs) > 1 else []
  rl_cfg = rl_config(cfg, tokenizer, plan)
  if sources.is_record_source(cfg.data):  # openings of documents may repeat: only records are checked
    warn_about_prompt_sets(prompts["train"], prompts["eval"], cfg.data.batch_size // rl_cfg.samples_per_prompt)
  policy_tx, value_tx = make_optimizers(cfg, plan)
  placed = [initial_state(c, plan, models, sft_run, reward_run, policy_tx, value_tx, mesh, rules) for c in seed_cfgs]
  state, shardings = placed[0] if len(placed) == 1 else seeds.stack(placed)
  one_seed_shardings = placed[0][1]
  base = setup.lora_base(cfg, sft_run, run_dir)
  score_fn = frozen.proxy_score_fn(models.scorer, reward_run) if reward_run else None
  drawn = cfg.data.batch_size // rl_cfg.samples_per_prompt + rl_cfg.oversample  # DAPO's refill draws extra prompts
  batch_of = lambda step: prompt_batch(prompts["train"], step, drawn, sample_mesh)
  k = rl_cfg.off_policy_steps
  engine = None if plan.engine == "jax" else engine_rollout.start(
      cfg, run_dir, state, models, tokenizer, prompts["train"].tokens.shape[1], rl_cfg, mesh, rules, score_fn)
  if engine:
    cleanup.callback(engine.close)
  evaluator = None  # the policy's evaluation (below), unless the driver brings its own
  if plan.driver == "multi_turn":  # with K >= 1 the K rollouts in flight join the state, as below
    driver, evaluator, state, shardings = compile_multi_turn(
        cfg, plan, run_dir, models, state, shardings, (mesh, sample_mesh), rules, policy_tx, value_tx, rl_cfg, prompts,
        tokenizer, score_fn, engine)
  elif k:  # the K rollouts in flight join the state (and its checkpoints)
    first = batch_of(0)
    scorer = HostScorer(plan.rewards.host, plan.rewards.in_graph, prompts["train"], tokenizer,
                        rl_cfg.samples_per_prompt, sample_mesh) if plan.rewards.host else None
    driver, state, shardings = compile_off_policy(state, shardings, mesh, sample_mesh, rules, models, policy_tx,
                                                  value_tx, score_fn, rl_cfg, (first["tokens"], first["mask"]), scorer,
                                                  engine)
  items = plan.items
  assert items == tuple(name for name in RL_ITEMS if getattr(state, name) is not None), (items, state)
  state, checkpointer, resumed = trainer.checkpointed(cfg, run_dir, state, shardings, items)
  files = trainer.RunFiles(tokenizer, models.policy.cfg, base, extra={"plan.json": plan.to_json()})
  for directory, directory_cfg in [(run_dir, cfg), *zip(seed_dirs, seed_cfgs)]:
    trainer.record(directory, directory_cfg, files)
  if k or plan.driver == "multi_turn":
    train_step = driver
    state = state if resumed or not k else driver.prefill(state, [batch_of(j) for j in range(k)])
  else:
    parts = (shardings, mesh, rules, models, policy_tx, value_tx, score_fn, rl_cfg)
    train_step = compile_train_step(parts, plan.rewards, prompts["train"], tokenizer, vmap_seeds=len(seed_cfgs),
                                    engine=engine)
  next_batch = lambda step: batch_of(step + k)  # off-policy, iteration i samples the prompts of i + K
  evaluator = evaluator or PolicyEvaluator(
      cfg, run_dir, models.policy, prompts["eval"], tokenizer, score_fn, policy_params(one_seed_shardings), mesh,
      label=cfg.algo, model_weight=plan.rewards.model_weight, host=plan.rewards.host,
      token=plan.rewards.token, token_params=rl_cfg.token_reward_params)
  cost = iteration_cost(cfg, rl_cfg, models, prompts["train"].tokens.shape[1], uses_model=reward_run is not None)
  evaluator, open_log = per_seed(evaluator, seed_cfgs, seed_dirs) if seed_dirs else (evaluator, MetricsLog)
  loop = Loop(cfg.train, run_dir, train_step, next_batch, evaluator, checkpointer, items, open_log, cost)
  summary = loop.train(state)
  if seed_dirs:
    summary = seed_summaries(summary, seed_cfgs, seed_dirs)
  return trainer.finish(run_dir, summary, **{"data/truncated_prompts": prompts["train"].truncated})


def meshes(cfg) -> tuple:
  """(training mesh, sampler mesh): the same one unless `rollout.devices` gives the sampler the
  last N devices, on a mesh of its own (`rollout.mesh`). vLLM's engine takes them in its own
  process, outside JAX: both meshes are the training one, on what it leaves (vllm_process.py)."""
  n = cfg.rollout.devices
  if not n:
    mesh = sharding.make_mesh(cfg.mesh)
    return mesh, mesh
  devices = jax.devices()
  if jax.process_count() > 1:
    raise UserError("rollout.devices > 0 on several processes is not supported yet: keep rollout.devices=0")
  if cfg.rollout.get("engine", "jax") != "jax":
    mesh = sharding.make_mesh(cfg.mesh, vllm_process.training_devices(n))
    return mesh, mesh
  if n >= len(devices):
    raise UserError(f"rollout.devices={n} leaves none of the {len(devices)} devices to train on")
  return sharding.make_mesh(cfg.mesh, devices[:-n]), sharding.make_mesh(cfg.rollout.mesh, devices[-n:])


def compile_multi_turn(cfg, plan, run_dir, models, state, shardings, meshes_, rules, policy_tx, value_tx, rl_cfg,
                       prompts, tokenizer, score_fn, engine=None):
  """(the iteration, the evaluator, state, shardings) of a multi-turn run: the environment's turns
  on the host, each row's turns of `env.turn_tokens` continued from its KV cache (turn_cache.py),
  around the compiled scoring pass and update; with K >= 1 (multi_turn_off_policy.py) the state
  gets its queue and the sampler may sit on devices of its own (the second of `meshes_`). With an
  external engine (`engine`: its EngineSampler) the training turns are its (engine_rollout.py);
  the evaluation's stay ours."""
  if jax.process_count() > 1:
    raise UserError("config.env (multi-turn) on several processes is not supported yet: run it on one process")
  mesh, sample_mesh = meshes_
  limits = multi_turn.TurnLimits(cfg.env.max_turns, cfg.env.turn_tokens, cfg.sample.max_new_tokens)
  call_format = environments.call_format(cfg.env, tokenizer, bool(cfg.data.get("chat_template")))
  capacity = cfg.max_prompt_len + cfg.sample.max_new_tokens + cfg.env.turn_tokens  # a full context, then a turn
  samplers = {id(m): turn_cache.turn_sampler(models.policy, off_policy.on_mesh(policy_params(shardings), m), m, rules,
                                             turn_tokens=cfg.env.turn_tokens, capacity=capacity,
                                             stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id) for m in meshes_}
  train_sampler = samplers[id(sample_mesh)] if engine is None else engine_rollout.EngineTurnSampler(
      engine.engine, models.policy.cfg, cfg.env.turn_tokens, tokenizer.stop_ids, tokenizer.pad_id)

  def rollouts(split, sampler):
    return multi_turn.Rollouts(sampler, environments.from_config(cfg.env, call_format), prompts[split],
                               tokenizer, limits, cfg.sample.temperature, call_format.close)

  evaluator = multi_turn.MultiTurnEvaluator(
      rollouts("eval", samplers[id(mesh)]), plan.rewards.host, run_dir, cfg.seed, cfg.algo, token=plan.rewards.token,
      token_params=rl_cfg.token_reward_params, model_scores=multi_turn.compile_model_scores(score_fn, mesh, rules),
      model_weight=plan.rewards.model_weight or 0.0, mesh=mesh)
  train_rollouts = rollouts("train", train_sampler)
  if rl_cfg.off_policy_steps:
    driver, state, shardings = compile_multi_turn_off_policy(
        state, shardings, mesh, sample_mesh, rules, models, policy_tx, value_tx, rl_cfg, rollouts=train_rollouts,
        host=plan.rewards.host, rows=cfg.data.batch_size, score_fn=score_fn,
        engine_apart=engine is not None and engine.overlaps)
    return driver, evaluator, state, shardings
  iteration = multi_turn.compile_multi_turn_iteration(shardings, mesh, rules, models, policy_tx, value_tx, rl_cfg,
                                                      rollouts=train_rollouts, host=plan.rewards.host,
                                                      score_fn=score_fn)
  return iteration, evaluator, state, shardings


def listed_tools(cfg, plan: rl_plan.RLPlan) -> list | None:
  """The tools' JSON schemas a chat template lists in each prompt (multi-turn in the chat
  template's call format), else None."""
  chat_calls = cfg.data.get("chat_template") and cfg.env.get("call_format", "auto") != "tagged"
  return (environments.tool_schemas(cfg.env) or None) if plan.driver == "multi_turn" and chat_calls else None


def compile_train_step(parts: tuple, plan: rewards.RewardPlan, prompts, tokenizer, vmap_seeds: int, engine=None):
  """(state, batch) -> (state, metrics): one compiled iteration with in-graph rewards only, or
  rollout -> host scoring -> update with host reward functions or an external engine's rollouts."""
  if plan.host or engine:
    return compile_host_iteration(*parts, vmap_seeds=vmap_seeds, engine=engine, host=plan.host,
                                  with_model=plan.in_graph, prompts=prompts, tokenizer=tokenizer)
  iteration = compile_iteration(*parts, vmapped=vmap_seeds > 1)
  return lambda state, batch: iteration(state, batch["tokens"], batch["mask"])


def compile_iteration(shardings, mesh, rules, models, policy_tx, value_tx, score_fn, rl_cfg, vmapped: bool):
  """The jitted iteration (state, prompts, mask) -> (state, metrics): the state donated and
  laid out by `shardings`, prompts split over the data axes, metrics replicated. Vmapped over
  the seed axis of a stacked state, with the prompts shared."""
  iteration = functools.partial(rl_iteration, policy=models.policy, critic=models.critic, policy_tx=policy_tx,
                                value_tx=value_tx, score_fn=score_fn, cfg=rl_cfg)
  if vmapped:
    axes = seeds.state_axes(shardings)
    iteration = jax.vmap(iteration, in_axes=(axes, None, None), out_axes=(axes, 0))
  data = sharding.batch_sharding(mesh)
  return jax.jit(sharding.with_rules(iteration, mesh, rules), in_shardings=(shardings, data, data),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)


def per_seed(evaluator, seed_cfgs, seed_dirs) -> tuple:
  """(evaluator, log opener) of vmapped seeds: each seed evaluated and logged in its own directory."""
  evaluator = seeds.SeedEvaluator([evaluator.for_seed(c, d) for c, d in zip(seed_cfgs, seed_dirs)])
  return evaluator, lambda _, start, num_steps: seeds.SeedLogs(seed_dirs, start, num_steps)


def seed_summaries(summary: dict, seed_cfgs, seed_dirs) -> dict:
  """Writes each vmapped seed's summary.json; returns the run's (means over seeds)."""
  for i, directory in enumerate(seed_dirs):
    directory.write_json("summary.json", seeds.per_seed(summary, i))
  return seeds.mean_summary(summary, [c.seed for c in seed_cfgs])


def with_seed(cfg, seed: int):
  seeded = cfg.copy_and_resolve_references()
  seeded.seed = seed
  return seeded


def iteration_cost(cfg, rl_cfg: RLConfig, models, prompt_len: int, uses_model: bool) -> StepCost:
  """One iteration's model FLOPs (rlhf_jax/flops.py) and the responses it generates."""
  rows, k = cfg.data.batch_size, rl_cfg.samples_per_prompt
  extra, greedy = rl_cfg.oversample * k, (rows // k if rl_cfg.needs_greedy else 0)
  model_flops = flops.rl_iteration(models.policy.cfg, rows, prompt_len, rl_cfg.max_new_tokens, rl_cfg.epochs,
                                   critic=models.critic is not None,  # a shared value head rides the policy
                                   reward_model=uses_model, extra_rows=extra, greedy_rows=greedy,
                                   off_policy=rl_cfg.off_policy_steps > 0,
                                   reused_scoring=reuses_scoring_pass(rl_cfg))
  return StepCost(model_flops, samples=rows + extra + greedy)


def rl_config(cfg, tokenizer, plan: rl_plan.RLPlan) -> RLConfig:
  return RLConfig(max_new_tokens=cfg.sample.max_new_tokens, stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id,
                  algo=cfg.algo, temperature=cfg.sample.temperature, model_weight=plan.rewards.model_weight,
                  host_rewards=tuple(h.name for h in plan.rewards.host), token_rewards=plan.rewards.token,
                  format_ids=tuple(tokenizer.encode(cfg.reward.get("format_text", ""))),
                  inject_nan_at=tuple(cfg.train.inject_nan_at), **batching_of(cfg.sample),
                  **plan.fields)


def initial_state(cfg, plan: rl_plan.RLPlan, models, sft_run, reward_run, policy_tx, value_tx, mesh, rules):
  """Policy and reference from SFT; scorer from the RM (if used); the critic as `cfg.critic`
  says. Returns (state, shardings)."""
  sources = {"policy": (models.policy, sft_run, None)}
  if models.scorer is not None:
    sources["reward"] = (models.scorer, reward_run, None)
  if plan.separate_critic:
    sources["value"] = ((models.critic, reward_run, {"reward_head": "value_head"})
                        if plan.critic == "reward" else (models.critic, sft_run, None))
  # A LoRA critic's adapters sit on weights the state holds already: the reference's or the reward model's.
  value_base = {"sft": "ref", "reward": "reward"}.get(plan.critic) if cfg.lora.rank else None
  build = functools.partial(rl_state.assemble_state, policy_tx=policy_tx, value_tx=value_tx, kl_coef=plan.kl_coef,
                            seed=cfg.seed, value_base=value_base)
  return frozen.load_state(sources, build, mesh, rules, cfg.seed, cfg.lora.continue_adapters)
