"""The DPO stage: the SFT policy trained on preference pairs against its frozen copy.

The pairs are the reward stage's (`reward_from`): with `preference.source=generated` the very
pairs the reward model learnt from (preferences_{train,eval}.jsonl), so DPO and RLHF see the
same data, as in the DPO paper's sentiment experiment; any other source loads as in the
reward stage. Evaluation is the RL stage's (gold reward, proxy reward from the reward run's
model, KL to the reference, samples) plus held-out pair accuracy and margin.
"""

import dataclasses

import jax
import numpy as np

from rlhf_jax import flops, memory, sharding
from rlhf_jax.algorithms.dpo import PREFERENCE_LOSSES
from rlhf_jax.data import batches
from rlhf_jax.data.prompts import prompt_set
from rlhf_jax.errors import UserError
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.core import setup, trainer
from rlhf_jax.training.core.compute import StepCost
from rlhf_jax.training.core.loop import Loop
from rlhf_jax.training.core.optim import make_optimizer
from rlhf_jax.training.policy import frozen
from rlhf_jax.training.policy.policy_eval import PolicyEvaluator
from rlhf_jax.training.policy.policy_state import policy_params
from rlhf_jax.training.preference.dpo_steps import averages, compile_dpo_steps
from rlhf_jax.training.preference.reward_trainer import preference_batches, preference_pairs
from rlhf_jax.workdir import RunDir

DPO_ITEMS = ("policy", "policy_opt", "rng")


def check_config(cfg) -> None:
  if cfg.dpo.loss not in PREFERENCE_LOSSES:
    raise UserError(f"dpo.loss={cfg.dpo.loss!r}: choose one of {', '.join(PREFERENCE_LOSSES)}")
  if cfg.dpo.beta <= 0:
    raise UserError(f"dpo.beta={cfg.dpo.beta} must be > 0")
  if cfg.dpo.get("soft_labels") and cfg.dpo.loss != "conservative":
    raise UserError(f"dpo.soft_labels=True takes each pair's label as conservative DPO's flip rate: set "
                    f"dpo.loss=conservative (not {cfg.dpo.loss})")
  if cfg.dpo.loss == "robust" and not 0 <= cfg.dpo.label_smoothing < 0.5:
    raise UserError(f"dpo.label_smoothing={cfg.dpo.label_smoothing}: robust DPO needs a flip rate in [0, 0.5)")


def run(cfg, workdir: str) -> dict:
  run_dir = RunDir(workdir)
  sft_run, reward_run = setup.source_run(cfg), frozen.reward_run_of(cfg)
  if sft_run is None:
    raise UserError("the DPO stage starts from an SFT run: set init_from (or keep config.upstream)")
  tokenizer = setup.prepare_tokenizer(cfg, run_dir, sft_run)
  reward_cfg = setup.frozen_model_config(reward_run)
  policy, scorer = Transformer(setup.model_config(cfg, tokenizer, sft_run)), Transformer(reward_cfg)
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules_of(cfg)
  memory.check(cfg, policy.cfg, mesh)
  pairs = {split: preference_pairs(cfg, reward_run, tokenizer, None, None, split) for split in ("train", "eval")}
  data = preference_batches(cfg, pairs, tokenizer)
  prompts = prompt_set(cfg, tokenizer, "eval")
  tx = make_optimizer(cfg.optim, cfg.train.num_steps)
  sources = {"policy": (policy, sft_run, None), "reward": (scorer, reward_run, None)}
  state, shardings = frozen.load_policy_state(sources, tx, mesh, rules, cfg.seed, cfg.lora.continue_adapters)
  state, checkpointer, _ = trainer.checkpointed(cfg, run_dir, state, shardings, DPO_ITEMS)
  trainer.record(run_dir, cfg, trainer.RunFiles(tokenizer, policy.cfg, setup.lora_base(cfg, sft_run, run_dir)))
  train, evaluate_pairs = compile_dpo_steps(policy, tx, cfg, shardings, mesh)
  policy_eval = PolicyEvaluator(cfg, run_dir, policy, prompts, tokenizer, frozen.proxy_score_fn(scorer, reward_run),
                                policy_params(shardings), mesh, label="dpo")
  evaluate = DPOEvaluator(policy_eval, evaluate_pairs, data["eval"], cfg.train.eval_batches, mesh)
  next_batch = lambda step: sharding.put_batch(data["train"].batch(step), mesh)
  cost = StepCost(flops.dpo_step(policy.cfg, cfg.data.batch_size, cfg.data.seq_len, cfg.data.pack))
  summary = Loop(cfg.train, run_dir, train, next_batch, evaluate, checkpointer, DPO_ITEMS, cost=cost).train(state)
  return trainer.finish(run_dir, summary, **{"data/truncated_pairs": data["train"].num_truncated})


@dataclasses.dataclass
class DPOEvaluator:
  """The RL evaluation of the policy, plus its held-out pair accuracy and margin."""
  policy_eval: PolicyEvaluator
  evaluate_pairs: object
  data: batches.PreferenceData
  max_batches: int
  mesh: object

  def __call__(self, state, step: int) -> dict:
    sums = None
    for batch in batches.eval_batches(self.data, self.max_batches):
      out = jax.device_get(self.evaluate_pairs(state, sharding.put_batch(batch, self.mesh)))
      sums = out if sums is None else {k: sums[k] + out[k] for k in out}
    means = averages({k: np.float32(v) for k, v in sums.items()})
    return {**self.policy_eval(state, step), **{f"eval/pair_{k}": float(v) for k, v in means.items()}}
