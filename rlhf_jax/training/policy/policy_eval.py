"""A policy against its frozen reference on held-out prompts, as the RL and DPO stages evaluate.

Both sample the same prompts at the sampling temperature and report the gold judge's reward
(never seen in training), the proxy reward (the score the policy is trained on: the reward
model's, `score_fn`, times its weight plus the host reward components', each also reported
as `reward/NAME`), the KL from the reference (the sum over response tokens of log pi - log ref
at the sampled tokens) and the response length, for the policy (`eval/...`) and the reference
(`eval/ref_...`), and write both policies' samples side by side to samples/step_N.txt.

With `eval.judge_model` (hf:DIR) a judge model compares each response with the prompt's
reference (its `eval.judge_reference_field` column; "": the reference policy's response) in
both orders: `eval/win_rate` (pairwise_judge.py).

On a verifiable task (a checker among the rewards) `eval/accuracy` is pass@1 at the sampling
temperature; `eval/greedy_accuracy` is the greedy response's, and with `eval.k` >= 2 samples
per prompt, `eval/pass@k` (any of them right), `eval/mean@k` (their mean: pass@1 with less
noise) and `eval/maj@k` (the majority answer's verdict; ties go to the answer drawn first).
"""

import copy
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import judges, pairwise_judge, rewards, sharding
from rlhf_jax.algorithms import token_rewards
from rlhf_jax.models.sampling import SamplingParams, is_stop
from rlhf_jax.training.core.logprobs import response_logprobs
from rlhf_jax.training.core.steps import jit_sampler
from rlhf_jax.training.policy.policy_state import policy_params, reference_params
from rlhf_jax.workdir import RunDir


@dataclasses.dataclass
class PolicyEvaluator:
  """Gold reward, proxy reward, KL, length and samples of the policy and its reference."""
  cfg: object  # the stage's: seed, judge, sample.{max_new_tokens, temperature, num_prompts}
  run_dir: RunDir
  policy: object  # the policy's model (the reference shares it)
  prompts: object  # data.prompts.Prompts
  tokenizer: object
  score_fn: object  # (state, tokens, mask, sampled) -> the reward model's scores; None: no reward model
  policy_shardings: object  # one seed's
  mesh: object
  label: str  # the policy's name in the samples file ("ppo", "dpo", ...)
  model_weight: float | None = 1.0  # the reward model's weight in the proxy reward (None: not in it)
  host: tuple = ()  # rewards.HostReward components of the proxy reward
  token: tuple = ()  # (name, weight) of the token rewards in the proxy reward (algorithms/token_rewards.py)
  token_params: object = None  # their TokenRewardParams

  def __post_init__(self):
    rules = sharding.rules_of(self.cfg)
    self.sampler = jit_sampler(self.policy, self.cfg.sample.max_new_tokens, self.tokenizer,
                               self.policy_shardings, self.mesh, rules, self.cfg.sample)
    self.scored = jax.jit(sharding.with_rules(self._score, self.mesh, rules),
                          out_shardings=sharding.replicated(self.mesh))
    self.win_judge = pairwise_judge.from_config(self.cfg.get("eval"), self.prompts.columns)

  def for_seed(self, cfg, run_dir: RunDir) -> "PolicyEvaluator":
    """This evaluator for one seed of a vmapped run, sharing its compiled functions."""
    evaluator = copy.copy(self)
    evaluator.cfg, evaluator.run_dir = cfg, run_dir
    return evaluator

  def _score(self, state, params, prompts, mask, rng):
    temperature = self.cfg.sample.temperature
    out = self.sampler(params, prompts, mask, rng, SamplingParams.make(temperature))
    tokens = jnp.concatenate([prompts, out.tokens], 1)
    full_mask = jnp.concatenate([mask, out.mask], 1)
    p = prompts.shape[1]
    logratio = (response_logprobs(self.policy, policy_params(state), tokens, full_mask, p, temperature)
                - response_logprobs(self.policy, state.ref, tokens, full_mask, p, temperature))
    kl = jnp.sum(logratio * out.mask, axis=1)
    model = self.score_fn(state, tokens, full_mask, out) if self.score_fn else jnp.zeros(tokens.shape[0])
    return out, model, kl

  def rewards(self, model, out, texts) -> tuple[dict, np.ndarray]:
    """({reward/NAME: scores per row} of every reward component, the proxy reward per row)."""
    per, proxy = {}, np.zeros(len(texts), np.float32)
    if self.model_weight is not None:
      per["reward/model"] = model
      proxy = proxy + self.model_weight * model
    if self.token:
      ended = np.any(is_stop(out.tokens, self.tokenizer.stop_ids) & (out.mask > 0), axis=1)
      scores, total = token_rewards.weighted_sum(self.token, out.tokens, out.mask, ended, self.token_params)
      per.update({f"reward/{name}": np.asarray(s) for name, s in scores.items()})
      proxy = proxy + np.asarray(total)
    if self.host:
      ids = [t[m > 0].tolist() for t, m in zip(out.tokens, out.mask)]
      total, components = rewards.score_texts(list(self.host), self.prompts.texts, texts, ids,
                                                   dict(self.prompts.columns),
                                                   self.model_weight is not None or bool(self.token))
      per.update({f"reward/{h.name}": components[:, i] for i, h in enumerate(self.host)})
      proxy = proxy + total
    return per, proxy

  def __call__(self, state, step: int) -> dict:
    prompts, mask = jnp.asarray(self.prompts.tokens), jnp.asarray(self.prompts.mask)
    rng = jax.random.fold_in(jax.random.PRNGKey(self.cfg.seed + 1), step)
    judge = judges.get_judge(self.cfg.judge) if self.cfg.judge else None
    metrics, texts, scores = {}, {}, {}
    for name, params in (("", policy_params(state)), ("ref_", reference_params(state))):
      out, model, kl = jax.device_get(self.scored(state, params, prompts, mask, rng))
      texts[name] = [self.tokenizer.decode(t[m > 0]) for t, m in zip(out.tokens, out.mask)]
      per, proxy = self.rewards(model, out, texts[name])
      if judge:
        per["gold_reward"] = judge(texts[name])
      checker = next((key for key in (f"reward/{c}" for c in rewards.CHECKERS) if key in per), None)
      if checker:  # a verifiable task's pass@1 at the sampling temperature
        per["accuracy"] = per[checker]
        per.update(self.verifiable(params, checker.removeprefix("reward/"), prompts, mask, rng))
      scores[name] = {**per, "proxy_reward": proxy}
      metrics.update({f"eval/{name}{key}": mean(value) for key, value in scores[name].items()})
      metrics[f"eval/{name}response_length"] = float(out.mask.sum(1).mean())
      if not name:
        metrics["eval/kl"] = float(np.mean(kl))
    if self.win_judge:  # against the references (eval.judge_reference_field) or the reference policy
      for name in scores:
        scores[name]["win_rate"] = self.win_judge(self.prompts.texts, texts[name], texts["ref_"])
        metrics[f"eval/{name}win_rate"] = mean(scores[name]["win_rate"])
    self.write_records(step, texts, scores)
    lines = [f"{p!r}\n  sft: {r!r}\n  {self.label}: {c!r}"
             for p, r, c in zip(self.prompts.texts, texts["ref_"], texts[""])][:self.cfg.sample.num_prompts]
    self.run_dir.write_samples(step, lines)
    return {**metrics, "samples": "\n\n".join(lines)}

  def verifiable(self, params, checker: str, prompts, mask, rng) -> dict:
    """Per prompt: the greedy response's verdict, and over eval.k samples pass@k, mean@k, maj@k."""
    component = next(h for h in self.host if h.name == checker)

    def check(out) -> tuple[np.ndarray, list]:
      out = jax.device_get(out)
      ids = [t[m > 0].tolist() for t, m in zip(out.tokens, out.mask)]
      texts = [self.tokenizer.decode(i) for i in ids]
      return component(self.prompts.texts, texts, ids, dict(self.prompts.columns))[0], texts

    k = getattr(self.cfg.eval, "k", 0) if "eval" in self.cfg else 0
    k = k if k >= 2 else 0  # one sample is eval/accuracy already
    temperature = SamplingParams.make(self.cfg.sample.temperature)
    samplings = [(rng, SamplingParams.make(greedy=True))] + [(jax.random.fold_in(rng, 1 + j), temperature)
                                                             for j in range(k)]
    outs = [self.sampler(params, prompts, mask, *s) for s in samplings]  # all dispatched before the host decodes
    per = {"greedy_accuracy": check(outs[0])[0]}
    if k:
      draws = [check(out) for out in outs[1:]]
      verdicts = np.stack([v for v, _ in draws], 1)  # [prompts, k]
      answers = [[rewards.final_answer(checker, texts[i]) for _, texts in draws]
                 for i in range(len(self.prompts.texts))]
      per.update({f"pass@{k}": (verdicts > 0).any(1).astype(np.float32), f"mean@{k}": verdicts.mean(1),
                  f"maj@{k}": majority_verdicts(answers, verdicts)})
    return per

  def write_records(self, step: int, texts: dict, scores: dict) -> None:
    """samples/step_N.jsonl: per held-out prompt, the policy's and the reference's responses,
    every score of both, and the prompt's columns (under `columns`: a record may have its own
    `response`)."""
    rows = []
    for i, prompt in enumerate(self.prompts.texts):
      row = {"prompt": prompt, "response": texts[""][i], "ref_response": texts["ref_"][i]}
      for name, per in scores.items():
        row.update({f"{name}{key}": float(value[i]) for key, value in per.items()})
      row["columns"] = {column: values[i] for column, values in self.prompts.columns.items()}
      rows.append(json.dumps(row))
    self.run_dir.write_samples(step, rows, suffix="jsonl")


def majority_verdicts(answers: list, verdicts: np.ndarray) -> np.ndarray:
  """Per prompt, the verdict on its most frequent answer (None: no answer; ties: the answer
  drawn first), as maj@k scores a majority vote."""
  out = np.zeros(len(answers), np.float32)
  for i, row in enumerate(answers):
    given = [a for a in row if a is not None]
    if given:
      top = max(dict.fromkeys(given), key=given.count)  # dict keeps first-seen order: ties go to the first
      out[i] = verdicts[i, row.index(top)]
  return out


def mean(values) -> float:
  """The mean over the rows a score applies to (a reward function's None is NaN)."""
  values = np.asarray(values)
  return float(np.nanmean(values) if np.isnan(values).any() else np.mean(values))
