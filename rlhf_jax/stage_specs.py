"""Each stage declared once: what runs it, what it checks before any stage starts, the upstream
stages it does not need, what export writes from its checkpoint, its headline metrics, its
batches and the models it holds. stages.py, memory.py and interop/export.py read these and keep
no stage-keyed tables of their own; a new stage is one entry here and its trainer module.

Runners and checks are named as "module:function" and imported when used, so the memory
planner and export, which read the rest, load no trainer.
"""

import dataclasses
import importlib
from typing import Callable

from rlhf_jax import rl_plan


@dataclasses.dataclass(frozen=True)
class Stage:
  runner: str  # "module:function" (cfg, workdir) -> summary
  models: Callable  # (cfg, model_cfg, rl plan) -> (trainable role -> (ModelConfig, optim), frozen role -> ModelConfig)
  sampled: Callable  # (cfg, model_cfg, rl plan) -> (rows, prompt + new tokens) of its largest sampled batch
  check: str = ""  # "module:function" (cfg) -> None: its fields that need no data
  unused_upstream: Callable = lambda cfg: set()  # the upstream stages its config does not need
  export_item: str = ""  # the checkpoint item export writes ("": not exported)
  headlines: tuple = ()  # the pipeline's closing table
  pairs: bool = False  # trains on preference pairs: chosen and rejected in one forward pass, data.share_prompt
  packs: bool = False  # data.pack: several sequences per row
  compares_policy: bool = False  # evaluates a policy against the reference (the closing table's gain)
  plan: Callable = lambda cfg: None  # the run's resolved plan, where the stage has one (rl_plan.py)

  def run(self, cfg, workdir: str) -> dict:
    return named(self.runner)(cfg, workdir)

  def check_config(self, cfg) -> None:
    if self.check:
      named(self.check)(cfg)


def named(spec: str) -> Callable:
  """The function a "module:function" spec names, imported now."""
  module, _, name = spec.partition(":")
  return getattr(importlib.import_module(module), name)


def _with_heads(model_cfg, *names):
  return dataclasses.replace(model_cfg, heads=names)


def lm_models(cfg, model_cfg, rl):
  return {"model": (model_cfg, cfg.optim)}, {}


def lm_sampled(cfg, model_cfg, rl):
  """Eval samples of `sample.num_prompts` prompts cut to fit min(seq_len, max_len)."""
  new = cfg.sample.max_new_tokens
  return cfg.sample.num_prompts, max(1, min(cfg.data.seq_len, model_cfg.max_len) - new) + new


def reward_models(cfg, model_cfg, rl):
  return {"reward model": (model_cfg, cfg.optim)}, {}


def reward_sampled(cfg, model_cfg, rl):
  """Pair generation: 2 x `preference.gen_batch` rows within `seq_len`."""
  new = cfg.preference.max_new_tokens
  return 2 * cfg.preference.gen_batch, max(1, cfg.data.seq_len - new) + new


def dpo_models(cfg, model_cfg, rl):
  return {"policy": (model_cfg, cfg.optim)}, {"reference": model_cfg, "reward scorer": _with_heads(model_cfg, "reward")}


def eval_sampled(cfg, model_cfg, rl):
  """Evaluation's `eval_prompts` responses."""
  return cfg.eval_prompts, cfg.max_prompt_len + cfg.sample.max_new_tokens


def rl_models(cfg, model_cfg, rl: rl_plan.RLPlan):
  policy = _with_heads(model_cfg, "value") if rl.critic == "shared" else model_cfg
  critic = {"critic": (_with_heads(model_cfg, "value"), cfg.value_optim)} if rl.separate_critic else {}
  scorer = {"reward model": _with_heads(model_cfg, "reward")} if rl.uses_reward_model else {}
  return {"policy": (policy, cfg.optim), **critic}, {"reference": policy, **scorer}


def rl_sampled(cfg, model_cfg, rl: rl_plan.RLPlan):
  """The rollout's `data.batch_size` responses and k for each extra prompt `rl.oversample`
  draws, or evaluation's `eval_prompts`."""
  extra = rl.fields["oversample"] * rl.fields["samples_per_prompt"]
  rows = max(cfg.data.batch_size + extra, cfg.eval_prompts)
  if rl.driver == "multi_turn":  # a turn sampled after a full context; the live rows gathered apart (turn_cache.py)
    return 2 * rows, cfg.max_prompt_len + cfg.sample.max_new_tokens + cfg.env.turn_tokens
  return rows, cfg.max_prompt_len + cfg.sample.max_new_tokens


def best_of_n_models(cfg, model_cfg, rl):
  return {}, {"policy": model_cfg, "reward scorer": _with_heads(model_cfg, "reward")}


def best_of_n_sampled(cfg, model_cfg, rl):
  """max(ns) responses to each of `eval_prompts` prompts."""
  return cfg.eval_prompts * max(cfg.ns), cfg.max_prompt_len + cfg.sample.max_new_tokens


def revise_models(cfg, model_cfg, rl):
  return {}, {"policy": model_cfg}


def revise_sampled(cfg, model_cfg, rl):
  """A chunk of `data.batch_size` contexts and the longest turn."""
  r = cfg.revise
  return cfg.data.batch_size, r.max_context_len + max(r.response_tokens, r.critique_tokens, r.revision_tokens)


LM = dict(runner="rlhf_jax.training.lm.lm_trainer:run", models=lm_models, sampled=lm_sampled, export_item="params",
          headlines=("eval/loss",), packs=True)
POLICY_HEADLINES = ("eval/ref_gold_reward", "eval/gold_reward", "eval/kl")
STAGES = {
    "pretrain": Stage(**LM),
    "sft": Stage(**LM),
    "reward": Stage("rlhf_jax.training.preference.reward_trainer:run", reward_models, reward_sampled, export_item="params",
                    check="rlhf_jax.training.preference.reward_trainer:check_config",
                    headlines=("eval/accuracy", "eval/gold_correlation"), pairs=True, packs=True),
    # Every RL algorithm; `ppo`, the stage's earlier name, still works (stage_names.py).
    "rl": Stage("rlhf_jax.training.rl.rl_trainer:run", rl_models, rl_sampled, check="rlhf_jax.training.rl.rl_trainer:check_config",
                unused_upstream=lambda cfg: rl_plan.resolve(cfg).unused_upstream, export_item="policy",
                plan=rl_plan.resolve,
                headlines=("eval/ref_gold_reward", "eval/gold_reward", "eval/ref_accuracy", "eval/accuracy", "eval/kl"),
                compares_policy=True),
    "dpo": Stage("rlhf_jax.training.preference.dpo_trainer:run", dpo_models, eval_sampled, check="rlhf_jax.training.preference.dpo_trainer:check_config",
                 export_item="policy", headlines=POLICY_HEADLINES, pairs=True, packs=True, compares_policy=True),
    # No training: n samples of the SFT policy, the proxy's best kept.
    "best_of_n": Stage("rlhf_jax.training.policy.best_of_n:run", best_of_n_models, best_of_n_sampled),
    # No training: Constitutional AI's critique -> revision chains, written as SFT records.
    "revise": Stage("rlhf_jax.training.policy.revise:run", revise_models, revise_sampled,
                    check="rlhf_jax.training.policy.revise:check_config", headlines=("records", "revised_fraction")),
}


def with_trait(trait: str) -> tuple:
  """The stages whose declaration sets `trait` (for error messages that name them)."""
  return tuple(name for name, stage in STAGES.items() if getattr(stage, trait))
