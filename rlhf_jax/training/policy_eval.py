"""A policy against its frozen reference on held-out prompts, as the RL and DPO stages evaluate.

Both sample the same prompts at the sampling temperature and report the gold judge's reward
(never seen in training), the proxy reward (the score the policy is trained on: the reward
model's, `score_fn`, times its weight plus the host reward components', each also reported
as `reward/NAME`), the KL from the reference (the sum over response tokens of log pi - log ref
at the sampled tokens) and the response length, for the policy (`eval/...`) and the reference
(`eval/ref_...`), and write both policies' samples side by side to samples/step_N.txt.
"""

import copy
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import judges, sharding
from rlhf_jax.models.sampling import SamplingParams
from rlhf_jax.training import host_rewards
from rlhf_jax.training.logprobs import response_logprobs
from rlhf_jax.training.steps import jit_sampler
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

  def __post_init__(self):
    rules = sharding.rules_of(self.cfg)
    self.sampler = jit_sampler(self.policy, self.cfg.sample.max_new_tokens, self.tokenizer,
                               self.policy_shardings, self.mesh, rules)
    self.scored = jax.jit(sharding.with_rules(self._score, self.mesh, rules),
                          out_shardings=sharding.replicated(self.mesh))

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
    logratio = (response_logprobs(self.policy, state.policy, tokens, full_mask, p, temperature)
                - response_logprobs(self.policy, state.ref, tokens, full_mask, p, temperature))
    kl = jnp.sum(logratio * out.mask, axis=1)
    model = self.score_fn(state, tokens, full_mask, out) if self.score_fn else jnp.zeros(tokens.shape[0])
    return out, model, kl

  def rewards(self, prefix: str, model, out, texts) -> tuple[dict, np.ndarray]:
    """The reward components' means (`eval/{prefix}reward/NAME`) and the proxy reward per row."""
    metrics, proxy = {}, np.zeros(len(texts), np.float32)
    if self.model_weight is not None:
      metrics[f"eval/{prefix}reward/model"] = float(np.mean(model))
      proxy = proxy + self.model_weight * model
    if self.host:
      ids = [t[m > 0].tolist() for t, m in zip(out.tokens, out.mask)]
      total, components = host_rewards.score_texts(list(self.host), self.prompts.texts, texts, ids,
                                                   dict(self.prompts.columns), self.model_weight is not None)
      metrics.update({f"eval/{prefix}reward/{h.name}": float(np.nanmean(components[:, i]))
                      for i, h in enumerate(self.host)})
      proxy = proxy + total
    return metrics, proxy

  def __call__(self, state, step: int) -> dict:
    prompts, mask = jnp.asarray(self.prompts.tokens), jnp.asarray(self.prompts.mask)
    rng = jax.random.fold_in(jax.random.PRNGKey(self.cfg.seed + 1), step)
    judge = judges.get_judge(self.cfg.judge)
    metrics, texts = {}, {}
    for name, params in (("", state.policy), ("ref_", state.ref)):
      out, model, kl = jax.device_get(self.scored(state, params, prompts, mask, rng))
      texts[name] = [self.tokenizer.decode(t[m > 0]) for t, m in zip(out.tokens, out.mask)]
      components, proxy = self.rewards(name, model, out, texts[name])
      metrics.update({**components, f"eval/{name}gold_reward": float(np.mean(judge(texts[name]))),
                      f"eval/{name}proxy_reward": float(np.mean(proxy)),
                      f"eval/{name}response_length": float(out.mask.sum(1).mean())})
      if not name:
        metrics["eval/kl"] = float(np.mean(kl))
    lines = [f"{p!r}\n  sft: {r!r}\n  {self.label}: {c!r}"
             for p, r, c in zip(self.prompts.texts, texts["ref_"], texts[""])][:self.cfg.sample.num_prompts]
    self.run_dir.write_samples(step, lines)
    return {**metrics, "samples": "\n\n".join(lines)}
