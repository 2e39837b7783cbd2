"""What an RL run resolves before it trains (rl_trainer.py runs it): its sources (the SFT run,
the reward run when its model is a reward component), tokenizer, models, meshes, prompts,
optimizers and `RLConfig`, gathered in one `Resolved` from which every driver is compiled, and
each seed's initial state (policy and reference from SFT, the critic as the plan says).
"""

import dataclasses
import functools

import jax
import optax

from rlhf_jax import memory, rl_plan, sharding
from rlhf_jax.data import sources
from rlhf_jax.data.prompts import prompt_batch, prompt_set, warn_about_prompt_sets
from rlhf_jax.envs import environments
from rlhf_jax.errors import UserError
from rlhf_jax.interop import vllm_process
from rlhf_jax.models.config import LORA_FIELDS, ModelConfig
from rlhf_jax.models.continuous import batching_of
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.core import setup
from rlhf_jax.training.core.optim import make_optimizer
from rlhf_jax.training.policy import frozen
from rlhf_jax.training.rl import rl_state, routing
from rlhf_jax.training.rl.rl_config import RLConfig
from rlhf_jax.workdir import RunDir


@dataclasses.dataclass
@dataclasses.dataclass
class Models:
  policy: Transformer
  critic: Transformer | None  # None: a value head on the policy backbone, or no critic
  scorer: Transformer | None  # the reward model, if it is a reward component


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


@dataclasses.dataclass(frozen=True)
class Resolved:
  """What an RL run resolves before it builds its state: every driver is compiled from these."""
  cfg: object  # the stage's config
  plan: rl_plan.RLPlan
  run_dir: RunDir
  sft_run: object  # the policy's source (setup.source_run: a run, or hf:DIR)
  lora_base: str  # the source a LoRA run's adapters sit on ("" without LoRA; setup.lora_base)
  reward_run: object  # the reward run, when its model is a reward component; else None
  tokenizer: object
  models: Models
  mesh: object  # the training mesh
  sample_mesh: object  # the sampler's: the training mesh unless `rollout.devices` gives it devices of its own
  rules: object  # logical axis -> mesh axes
  prompts: dict  # "train", "eval" -> data.prompts.Prompts
  rl_cfg: RLConfig
  policy_tx: optax.GradientTransformation
  value_tx: optax.GradientTransformation | None
  score_fn: object  # the reward model's scores, or None

  def batch(self, step: int) -> dict:
    """The training prompts iteration `step` samples (DAPO's refill draws extra prompts)."""
    drawn = self.cfg.data.batch_size // self.rl_cfg.samples_per_prompt + self.rl_cfg.oversample
    return prompt_batch(self.prompts["train"], step, drawn, self.sample_mesh)


def resolve(cfg, workdir: str) -> Resolved:
  """The run's sources, tokenizer, models, meshes, prompts and optimizers, checked."""
  run_dir, plan = RunDir(workdir), rl_plan.resolve(cfg)
  sft_run = setup.source_run(cfg)
  reward_run = frozen.reward_run_of(cfg) if plan.uses_reward_model else None
  if sft_run is None:
    raise UserError("the RL stage starts from an SFT run: set init_from (or keep config.upstream)")
  lora_base = setup.lora_base(cfg, sft_run, run_dir)  # a workdir's adapters on another base: refused now
  tokenizer = setup.prepare_tokenizer(cfg, run_dir, sft_run)
  reward_cfg = setup.frozen_model_config(reward_run) if reward_run else None
  models = make_models(plan, setup.model_config(cfg, tokenizer, sft_run), reward_cfg)
  routing.check(cfg, plan, models.policy.cfg)  # the SFT run's architecture: an MoE policy or not
  (mesh, sample_mesh), rules = meshes(cfg), sharding.rules_of(cfg)
  memory.check(cfg, models.policy.cfg, mesh, rl=plan)
  prompts = {split: prompt_set(cfg, tokenizer, split, listed_tools(cfg, plan)) for split in ("train", "eval")}
  rl_cfg = rl_config(cfg, tokenizer, plan)
  if sources.is_record_source(cfg.data):  # openings of documents may repeat: only records are checked
    warn_about_prompt_sets(prompts["train"], prompts["eval"], cfg.data.batch_size // rl_cfg.samples_per_prompt)
  score_fn = frozen.proxy_score_fn(models.scorer, reward_run) if reward_run else None
  return Resolved(cfg, plan, run_dir, sft_run, lora_base, reward_run, tokenizer, models, mesh, sample_mesh, rules,
                  prompts, rl_cfg, *make_optimizers(cfg, plan), score_fn)


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


def listed_tools(cfg, plan: rl_plan.RLPlan) -> list | None:
  """The tools' JSON schemas a chat template lists in each prompt (multi-turn in the chat
  template's call format), else None."""
  chat_calls = cfg.data.get("chat_template") and cfg.env.get("call_format", "auto") != "tagged"
  return (environments.tool_schemas(cfg.env) or None) if plan.driver == "multi_turn" and chat_calls else None


def with_seed(cfg, seed: int):
  seeded = cfg.copy_and_resolve_references()
  seeded.seed = seed
  return seeded


def rl_config(cfg, tokenizer, plan: rl_plan.RLPlan) -> RLConfig:
  return RLConfig(max_new_tokens=cfg.sample.max_new_tokens, stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id,
                  algo=cfg.algo, temperature=cfg.sample.temperature, model_weight=plan.rewards.model_weight,
                  host_rewards=tuple(h.name for h in plan.rewards.host), token_rewards=plan.rewards.token,
                  format_ids=tuple(tokenizer.encode(cfg.reward.get("format_text", ""))),
                  inject_nan_at=tuple(cfg.train.inject_nan_at), **batching_of(cfg.sample),
                  **plan.fields)


def initial_state(cfg, run: Resolved):
  """Policy and reference from SFT; scorer from the RM (if used); the critic as `cfg.critic`
  says; `cfg`: the run's config with one seed's. Returns (state, shardings)."""
  plan, models, sft_run, reward_run = run.plan, run.models, run.sft_run, run.reward_run
  sources = {"policy": (models.policy, sft_run, None)}
  if models.scorer is not None:
    sources["reward"] = (models.scorer, reward_run, None)
  if plan.separate_critic:
    sources["value"] = ((models.critic, reward_run, {"reward_head": "value_head"})
                        if plan.critic == "reward" else (models.critic, sft_run, None))
  # A LoRA critic's adapters sit on weights the state holds already: the reference's or the reward model's.
  value_base = {"sft": "ref", "reward": "reward"}.get(plan.critic) if cfg.lora.rank else None
  build = functools.partial(rl_state.assemble_state, policy_tx=run.policy_tx, value_tx=run.value_tx,
                            kl_coef=plan.kl_coef, seed=cfg.seed, value_base=value_base)
  return frozen.load_state(sources, build, run.mesh, run.rules, cfg.seed, cfg.lora.continue_adapters)
