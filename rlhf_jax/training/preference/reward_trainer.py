"""Reward modelling: the SFT backbone with a scalar head, trained with Bradley-Terry.

With `preference.source=generated`, pairs are two samples of the starting (SFT) policy per
prompt, labelled by a gold judge through a Bradley-Terry draw (noisy, as human labels
are). They are written to preferences_{train,eval}.jsonl, so a resumed run reuses them.
After training, a gain and bias make the rewards of SFT samples mean 0 and std 1.
"""

import dataclasses
import functools
import json
import os

from absl import logging
import jax
import numpy as np

from rlhf_jax import flops, judges, memory, pairwise_judge, sharding
from rlhf_jax.algorithms.reward import normalisation
from rlhf_jax.data import batches, constitution, preferences
from rlhf_jax.data.prompts import encode_prompts, prompt_texts, token_counter
from rlhf_jax.errors import UserError
from rlhf_jax.models.sampling import SamplingParams
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.core import setup, trainer
from rlhf_jax.training.core.compute import StepCost
from rlhf_jax.training.core.loop import Loop
from rlhf_jax.training.core.optim import learning_rate_schedule, make_optimizer
from rlhf_jax.training.core.state import model_params
from rlhf_jax.training.preference.reward_steps import compile_reward_steps
from rlhf_jax.workdir import RunDir


def check_config(cfg) -> None:
  """The labeller of generated pairs: a gold judge by name, or a judge model (hf:DIR or a run's
  directory, which an earlier stage may still have to write)."""
  pref = cfg.preference
  if pref.source != "generated":
    return
  if pairwise_judge.is_model(pref.judge):
    pairwise_judge.check_source(pref.judge, "preference.judge", pending=True)
  judges.get_judge(pref_gold_judge(pref))
  if pref.get("constitution"):
    choice_questions(pref)


def choice_questions(pref) -> list:
  """The `choice` question of each principle of `preference.constitution`, which the judge model
  is asked one of per pair (Constitutional AI's RL phase)."""
  if not pairwise_judge.is_model(pref.judge):
    raise UserError(f"preference.constitution is read by a judge model: set preference.judge=hf:DIR or a run, not "
                    f"{pref.judge!r}")
  if pref.get("judge_template") and "{principle}" not in pref.judge_template:
    raise UserError("preference.judge_template must hold {principle} to ask the constitution's principles")
  principles = constitution.load(pref.constitution, "preference.constitution")
  if not all(p.choice for p in principles):
    raise UserError(f"preference.constitution={pref.constitution!r}: every principle needs a 'choice' question "
                    "for the judge")
  return [p.choice for p in principles]


def run(cfg, workdir: str) -> dict:
  """Trains a reward model in `workdir`, starting from the SFT run `init_from`."""
  run_dir = RunDir(workdir)
  source = setup.source_run(cfg)
  if source is None:
    raise UserError("the reward stage starts from an SFT run: set init_from (or keep config.upstream)")
  tokenizer = setup.prepare_tokenizer(cfg, run_dir, source)
  model_cfg = setup.model_config(cfg, tokenizer, source)
  if "reward" not in model_cfg.heads:
    raise UserError("the reward stage needs model.heads to include 'reward'")
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules_of(cfg)
  memory.check(cfg, model_cfg, mesh)
  model = Transformer(model_cfg)
  tx = make_optimizer(cfg.optim, cfg.train.num_steps)
  state, shardings = setup.init_state(model, tx, mesh, rules, cfg.seed)
  # The starting policy samples the generated pairs: the source's weights, not a checkpoint's.
  start = setup.from_source(state, shardings, source, mesh, rules, cfg.lora.continue_adapters)
  start_params = model_params(start)
  state, checkpointer, _ = trainer.checkpointed(cfg, run_dir, start, shardings)
  trainer.record(run_dir, cfg, trainer.RunFiles(tokenizer, model_cfg, setup.lora_base(cfg, source, run_dir)))
  policy = Transformer(dataclasses.replace(model_cfg, heads=()))
  steps = compile_reward_steps(model, policy, tx, learning_rate_schedule(cfg.optim, cfg.train.num_steps),
                               shardings, mesh, cfg, tokenizer)
  pairs = {split: preference_pairs(cfg, run_dir, tokenizer, steps.sample, start_params, split)
           for split in ("train", "eval")}
  data = preference_batches(cfg, pairs, tokenizer)
  evaluate = RewardEvaluator(cfg, steps, data["eval"], [p.get("gold") for p in pairs["eval"]], mesh)
  next_batch = lambda step: sharding.put_batch(data["train"].batch(step), mesh)
  cost = StepCost(flops.reward_step(model_cfg, cfg.data.batch_size, cfg.data.seq_len,
                                    data["train"].slots if cfg.data.pack else 0))
  summary = Loop(cfg.train, run_dir, steps.train, next_batch, evaluate, checkpointer, cost=cost).train(state)
  return trainer.finish(run_dir, summary, **{"data/truncated_pairs": data["train"].num_truncated})


def preference_batches(cfg, pairs: dict, tokenizer) -> dict:
  """split -> PreferenceData of that split's pairs: training's shuffled (and packed, its prompts
  shared, as data.pack and data.share_prompt say); held-out pairs stay one per row, in order,
  so their rewards keep the order of the pairs' gold scores."""
  return {split: batches.PreferenceData(encode_triples(p, tokenizer), tokenizer, cfg.data.seq_len,
                                        cfg.data.batch_size, cfg.seed, shuffle=split == "train",
                                        labels=[row.get("label", 1.0) for row in p],
                                        pack=cfg.data.pack and split == "train",
                                        share_prompt=cfg.data.share_prompt and split == "train",
                                        process_index=jax.process_index(), process_count=jax.process_count())
          for split, p in pairs.items()}


def encode_triples(pairs, tokenizer):
  return [tuple(tokenizer.encode(p[k]) for k in ("prompt", "chosen", "rejected")) for p in pairs]


def preference_pairs(cfg, run_dir: RunDir, tokenizer, sampler, params, split: str) -> list[dict]:
  """Pairs as dicts (prompt, chosen, rejected[, gold]); generated ones are cached as JSONL in
  `run_dir`. With no `sampler`, generated pairs must already be there (DPO reads the RM's)."""
  pref = cfg.preference
  if pref.source != "generated":
    return [dict(zip(("prompt", "chosen", "rejected"), t))
            for t in preferences.load_pairs(pref, split, token_counter(tokenizer))]
  name = f"preferences_{split}.jsonl"
  path = run_dir.file(name)
  if not os.path.isfile(path) and sampler is None:
    raise UserError(f"{path}: the reward run has no generated pairs; set preference.source")
  if not os.path.isfile(path):
    count = pref.train_pairs if split == "train" else pref.eval_pairs
    rows = generate_pairs(cfg, tokenizer, sampler, params, split, count)
    run_dir.write_text(name, "".join(json.dumps(r) + "\n" for r in rows))
  with open(path) as f:
    return [json.loads(line) for line in f]


def generate_pairs(cfg, tokenizer, sampler, params, split: str, count: int) -> list[dict]:
  """Two policy samples per held-out-split prompt, labelled by the gold judge (a Bradley-Terry
  draw on its scores) or, with `preference.judge` hf:DIR or a run, by a judge model (RLAIF:
  pairwise_judge.both_orders)."""
  pref, gold_judge = cfg.preference, judges.get_judge(pref_gold_judge(cfg.preference))
  labeller = ai_labeller(pref) if pairwise_judge.is_model(pref.judge) else None
  questions = choice_questions(pref) if pref.get("constitution") else None
  seed = cfg.seed + (0 if split == "train" else 1)
  prompts = prompt_texts(cfg.data, split, seed, count, tokenizer)[0]
  settings = SamplingParams.make(pref.temperature)
  rows = []
  for first in range(0, len(prompts), pref.gen_batch):
    chunk = prompts[first:first + pref.gen_batch]
    encoded = encode_prompts([p for p in chunk for _ in range(2)], tokenizer, cfg.data.seq_len - pref.max_new_tokens)
    rng = jax.random.fold_in(jax.random.key(seed + 17), first)
    out = jax.device_get(sampler(params, encoded.tokens, encoded.mask, rng, settings))
    texts = [tokenizer.decode(t[m > 0]) for t, m in zip(out.tokens, out.mask)]
    gold = gold_judge(texts)
    if labeller:
      a_wins, extra = judged(labeller, questions, chunk, texts, seed, first)
    else:
      a_wins = preferences.label_pairs(gold[0::2], gold[1::2], pref.gold_scale, np.random.default_rng([seed, first]))
      extra = [{}] * len(chunk)
    for i, prompt in enumerate(chunk):
      a, b = (2 * i, 2 * i + 1) if a_wins[i] else (2 * i + 1, 2 * i)
      rows.append({"prompt": prompt, "chosen": texts[a], "rejected": texts[b],
                   "gold": [float(gold[a]), float(gold[b])], **extra[i]})
  logging.info("generated %d %s preference pairs%s", len(rows), split, label_summary(rows) if labeller else "")
  return rows


def judged(labeller, questions, chunk, texts, seed: int, first: int) -> tuple:
  """(A preferred [n], each pair's label fields) by the judge model; with a constitution's
  `questions`, each pair asked one, drawn from (seed, the pair's index) as the paper samples it."""
  asked = [constitution.draw(len(questions), 1, seed, first + i)[0] for i in range(len(chunk))] if questions else []
  p_a, agree = pairwise_judge.both_orders(labeller, chunk, texts[0::2], texts[1::2],
                                          [questions[q] for q in asked] if asked else None)
  extra = [{"label": float(max(p, 1 - p)), "orders_agree": bool(o)} for p, o in zip(p_a, agree)]
  return p_a >= 0.5, [{**e, "principle": q} for e, q in zip(extra, asked)] if asked else extra


def pref_gold_judge(pref) -> str:
  """The gold judge generated pairs are measured by: `preference.judge`, or with a judge model
  labelling them, `preference.gold_judge`."""
  return pref.get("gold_judge", "vader") if pairwise_judge.is_model(pref.judge) else pref.judge


def ai_labeller(pref):
  default = pairwise_judge.CONSTITUTION_TEMPLATE if pref.get("constitution") else pairwise_judge.PREFERENCE_TEMPLATE
  return loaded_judge(pref.judge, pref.get("judge_template") or default, pref.get("judge_batch", 16))


@functools.lru_cache(maxsize=1)
def loaded_judge(source: str, template: str, batch: int):
  """The judge model, loaded once for both splits' pairs."""
  return pairwise_judge.PairwiseJudge(source, template, batch=batch, setting="preference.judge")


def label_summary(rows) -> str:
  """How the judge model's labels went: the two orders' agreement, and the gold judge's."""
  agree = np.mean([r["orders_agree"] for r in rows])
  gold = np.mean([r["gold"][0] > r["gold"][1] for r in rows if r["gold"][0] != r["gold"][1]] or [np.nan])
  return f" by the judge model: its two orders agree on {agree:.3f}, the gold judge on {gold:.3f}"


@dataclasses.dataclass
class RewardEvaluator:
  """Held-out accuracy and margin, the SFT-sample normalisation, and agreement with gold."""
  cfg: object
  steps: object
  data: batches.PreferenceData
  gold: list  # per eval pair [gold_chosen, gold_rejected], or None for file data
  mesh: object

  def __call__(self, state, step: int) -> dict:
    params, sums, rewards = model_params(state), None, []
    for batch in batches.eval_batches(self.data, self.cfg.train.eval_batches):
      out, chosen, rejected, valid = jax.device_get(self.steps.eval(params, sharding.put_batch(batch, self.mesh)))
      sums = out if sums is None else {k: sums[k] + out[k] for k in out}
      rewards.append(np.stack([chosen[valid], rejected[valid]], axis=1))
    rewards = np.concatenate(rewards)
    pairs = max(float(sums["pairs"]), 1.0)
    gain, bias = normalisation(rewards.reshape(-1))
    metrics = {"eval/loss": float(sums["nll"]) / pairs, "eval/accuracy": float(sums["correct"]) / pairs,
               "eval/margin": float(sums["margin"]) / pairs, "reward_gain": float(gain), "reward_bias": float(bias)}
    if self.gold and self.gold[0] is not None:
      gold = np.array(self.gold[:len(rewards)], np.float32)
      metrics["eval/gold_correlation"] = float(np.corrcoef(rewards.reshape(-1), gold.reshape(-1))[0, 1])
      # The labels a model learnt from may be a judge's or noisy draws: this is against gold itself.
      ordered = gold[:, 0] != gold[:, 1]
      metrics["eval/gold_accuracy"] = float(np.mean((rewards[ordered, 0] > rewards[ordered, 1]) ==
                                                    (gold[ordered, 0] > gold[ordered, 1])))
    return metrics
