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
same update (multi_turn.py). Which one runs is the plan's `driver` (rl_plan.py); what the run
resolves before it (models, meshes, prompts, optimizers, initial states) is rl_setup.py's.
Evaluation compares the policy with the reference on held-out prompts by the gold judge, the
reward (each component and their sum) and the KL between them.
"""

import contextlib
import functools

import jax

from rlhf_jax import flops, pairwise_judge, rl_plan, sharding
from rlhf_jax.algorithms.advantages import ADVANTAGES
from rlhf_jax.algorithms.importance import IS_CORRECTIONS
from rlhf_jax.algorithms.rollout_correction import ROLLOUT_CORRECTIONS
from rlhf_jax.envs import environments
from rlhf_jax.errors import UserError
from rlhf_jax.metrics_log import MetricsLog
from rlhf_jax.training.core import trainer
from rlhf_jax.training.core.compute import StepCost
from rlhf_jax.training.core.loop import Loop
from rlhf_jax.training.policy.policy_eval import PolicyEvaluator
from rlhf_jax.training.policy.policy_state import policy_params
from rlhf_jax.training.rl import engine_rollout, multi_turn, off_policy, seeds, turn_cache
from rlhf_jax.training.rl.host_rewards import HostScorer, compile_host_iteration
from rlhf_jax.training.rl.multi_turn_off_policy import compile_multi_turn_off_policy
from rlhf_jax.training.rl.off_policy import compile_off_policy
from rlhf_jax.training.rl.rl_setup import Resolved, initial_state, resolve, with_seed
from rlhf_jax.training.rl.rl_steps import RLConfig, reuses_scoring_pass, rl_iteration
from rlhf_jax.workdir import RunDir

RL_ITEMS = ("policy", "policy_opt", "value", "value_opt", "kl", "baseline", "rng", "pending")


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
                    f"rl.rollout_correction_bounds={tuple(rl['rollout_correction_bounds'])} hold 1 "
                    "(0 <= low <= 1 <= high)")
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


def run(cfg, workdir: str) -> dict:
  with contextlib.ExitStack() as cleanup:  # an engine's own process stops with the run, however it ends
    return run_with(cfg, workdir, cleanup)


def run_with(cfg, workdir: str, cleanup: contextlib.ExitStack) -> dict:
  run = resolve(cfg, workdir)
  seed_cfgs = [with_seed(cfg, cfg.seed + i) for i in range(cfg.vmap_seeds)]
  seed_dirs = [RunDir(run.run_dir.file(f"seed_{c.seed}")) for c in seed_cfgs] if len(seed_cfgs) > 1 else []
  placed = [initial_state(c, run) for c in seed_cfgs]
  state, shardings = placed[0] if len(placed) == 1 else seeds.stack(placed)
  engine = None if run.plan.engine == "jax" else engine_rollout.start(
      cfg, run.run_dir, state, run.models, run.tokenizer, run.prompts["train"].tokens.shape[1], run.rl_cfg, run.mesh,
      run.rules, run.score_fn)
  if engine:
    cleanup.callback(engine.close)
  driver, evaluator, state, shardings = compile_driver(run, state, shardings, engine)
  assert run.plan.items == tuple(name for name in RL_ITEMS if getattr(state, name) is not None), (run.plan, state)
  state, checkpointer, resumed = trainer.checkpointed(cfg, run.run_dir, state, shardings, run.plan.items)
  files = trainer.RunFiles(run.tokenizer, run.models.policy.cfg, run.lora_base, extra={"plan.json": run.plan.to_json()})
  for directory, directory_cfg in [(run.run_dir, cfg), *zip(seed_dirs, seed_cfgs)]:
    trainer.record(directory, directory_cfg, files)
  k = run.rl_cfg.off_policy_steps
  if driver is None:
    driver = compile_train_step(run, shardings, vmap_seeds=len(seed_cfgs), engine=engine)
  elif k and not resumed:  # the queue's first K rollouts, by the initial policy
    state = driver.prefill(state, [run.batch(j) for j in range(k)])
  evaluator = evaluator or policy_evaluator(run, placed[0][1])
  evaluator, open_log = per_seed(evaluator, seed_cfgs, seed_dirs) if seed_dirs else (evaluator, MetricsLog)
  cost = iteration_cost(cfg, run.rl_cfg, run.models, run.prompts["train"].tokens.shape[1],
                        uses_model=run.reward_run is not None)
  next_batch = lambda step: run.batch(step + k)  # off-policy, iteration i samples the prompts of i + K
  loop = Loop(cfg.train, run.run_dir, driver, next_batch, evaluator, checkpointer, run.plan.items, open_log, cost)
  summary = loop.train(state)
  if seed_dirs:
    summary = seed_summaries(summary, seed_cfgs, seed_dirs)
  return trainer.finish(run.run_dir, summary, **{"data/truncated_prompts": run.prompts["train"].truncated})


def compile_driver(run: Resolved, state, shardings, engine=None) -> tuple:
  """(driver, evaluator, state, shardings) of a multi-turn or off-policy run, whose drivers bring
  what joins the state (the K rollouts in flight, in its checkpoints); (None, None, state,
  shardings) for the others, compiled after the restore (compile_train_step)."""
  if run.plan.driver == "multi_turn":
    return compile_multi_turn(run, state, shardings, engine)
  if not run.rl_cfg.off_policy_steps:
    return None, None, state, shardings
  first, rewards_plan = run.batch(0), run.plan.rewards
  scorer = HostScorer(rewards_plan.host, rewards_plan.in_graph, run.prompts["train"], run.tokenizer,
                      run.rl_cfg.samples_per_prompt, run.sample_mesh) if rewards_plan.host else None
  driver, state, shardings = compile_off_policy(
      state, shardings, run.mesh, run.sample_mesh, run.rules, run.models, run.policy_tx, run.value_tx, run.score_fn,
      run.rl_cfg, (first["tokens"], first["mask"]), scorer, engine)
  return driver, None, state, shardings


def policy_evaluator(run: Resolved, one_seed_shardings) -> PolicyEvaluator:
  """The policy's evaluation against the reference on the held-out prompts (one-turn runs)."""
  rewards_plan = run.plan.rewards
  return PolicyEvaluator(
      run.cfg, run.run_dir, run.models.policy, run.prompts["eval"], run.tokenizer, run.score_fn,
      policy_params(one_seed_shardings), run.mesh, label=run.cfg.algo, model_weight=rewards_plan.model_weight,
      host=rewards_plan.host, token=rewards_plan.token, token_params=run.rl_cfg.token_reward_params)


def compile_multi_turn(run: Resolved, state, shardings, engine=None):
  """(the iteration, the evaluator, state, shardings) of a multi-turn run: the environment's turns
  on the host, each row's turns of `env.turn_tokens` continued from its KV cache (turn_cache.py),
  around the compiled scoring pass and update; with K >= 1 (multi_turn_off_policy.py) the state
  gets its queue and the sampler may sit on devices of its own (`run.sample_mesh`). With an
  external engine (`engine`: its EngineSampler) the training turns are its (engine_rollout.py);
  the evaluation's stay ours."""
  if jax.process_count() > 1:
    raise UserError("config.env (multi-turn) on several processes is not supported yet: run it on one process")
  cfg, models, tokenizer, rl_cfg, rewards_plan = run.cfg, run.models, run.tokenizer, run.rl_cfg, run.plan.rewards
  limits = multi_turn.TurnLimits(cfg.env.max_turns, cfg.env.turn_tokens, cfg.sample.max_new_tokens)
  call_format = environments.call_format(cfg.env, tokenizer, bool(cfg.data.get("chat_template")))
  capacity = cfg.max_prompt_len + cfg.sample.max_new_tokens + cfg.env.turn_tokens  # a full context, then a turn
  samplers = {id(m): turn_cache.turn_sampler(models.policy, off_policy.on_mesh(policy_params(shardings), m), m,
                                             run.rules, turn_tokens=cfg.env.turn_tokens, capacity=capacity,
                                             stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id)
              for m in (run.mesh, run.sample_mesh)}
  train_sampler = samplers[id(run.sample_mesh)] if engine is None else engine_rollout.EngineTurnSampler(
      engine.engine, models.policy.cfg, cfg.env.turn_tokens, tokenizer.stop_ids, tokenizer.pad_id, engine.adapters)

  def rollouts(split, sampler):
    return multi_turn.Rollouts(sampler, environments.from_config(cfg.env, call_format), run.prompts[split],
                               tokenizer, limits, cfg.sample.temperature, call_format.close)

  evaluator = multi_turn.MultiTurnEvaluator(
      rollouts("eval", samplers[id(run.mesh)]), rewards_plan.host, run.run_dir, cfg.seed, cfg.algo,
      token=rewards_plan.token, token_params=rl_cfg.token_reward_params,
      model_scores=multi_turn.compile_model_scores(run.score_fn, run.mesh, run.rules),
      model_weight=rewards_plan.model_weight or 0.0, mesh=run.mesh)
  if rl_cfg.off_policy_steps:
    driver, state, shardings = compile_multi_turn_off_policy(
        state, shardings, run.mesh, run.sample_mesh, run.rules, models, run.policy_tx, run.value_tx, rl_cfg,
        rollouts=rollouts("train", train_sampler), host=rewards_plan.host, rows=cfg.data.batch_size,
        score_fn=run.score_fn, engine_apart=engine is not None and engine.overlaps)
    return driver, evaluator, state, shardings
  iteration = multi_turn.compile_multi_turn_iteration(
      shardings, run.mesh, run.rules, models, run.policy_tx, run.value_tx, rl_cfg,
      rollouts=rollouts("train", train_sampler), host=rewards_plan.host, score_fn=run.score_fn)
  return iteration, evaluator, state, shardings


def compile_train_step(run: Resolved, shardings, vmap_seeds: int, engine=None):
  """(state, batch) -> (state, metrics): one compiled iteration with in-graph rewards only, or
  rollout -> host scoring -> update with host reward functions or an external engine's rollouts."""
  parts = (shardings, run.mesh, run.rules, run.models, run.policy_tx, run.value_tx, run.score_fn, run.rl_cfg)
  rewards_plan = run.plan.rewards
  if rewards_plan.host or engine:
    return compile_host_iteration(*parts, vmap_seeds=vmap_seeds, engine=engine, host=rewards_plan.host,
                                  with_model=rewards_plan.in_graph, prompts=run.prompts["train"],
                                  tokenizer=run.tokenizer)
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
