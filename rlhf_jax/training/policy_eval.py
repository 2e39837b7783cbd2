"""A policy against its frozen reference on held-out prompts, as the RL and DPO stages evaluate.

Both sample the same prompts at the sampling temperature and report the gold judge's reward
(never seen in training), the proxy reward (`score_fn`), the KL from the reference (the sum
over response tokens of log pi - log ref at the sampled tokens) and the response length, for
the policy (`eval/...`) and the reference (`eval/ref_...`), and write both policies' samples
side by side to samples/step_N.txt.
"""

import copy
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import judges, sharding
from rlhf_jax.models.sampling import SamplingParams
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
  score_fn: object  # (state, tokens, mask, sampled) -> proxy scores
  policy_shardings: object  # one seed's
  mesh: object
  label: str  # the policy's name in the samples file ("ppo", "dpo", ...)

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
    return out, self.score_fn(state, tokens, full_mask, out), kl

  def __call__(self, state, step: int) -> dict:
    prompts, mask = jnp.asarray(self.prompts.tokens), jnp.asarray(self.prompts.mask)
    rng = jax.random.fold_in(jax.random.PRNGKey(self.cfg.seed + 1), step)
    judge = judges.get_judge(self.cfg.judge)
    metrics, texts = {}, {}
    for name, params in (("", state.policy), ("ref_", state.ref)):
      out, proxy, kl = jax.device_get(self.scored(state, params, prompts, mask, rng))
      texts[name] = [self.tokenizer.decode(t[m > 0]) for t, m in zip(out.tokens, out.mask)]
      metrics.update({f"eval/{name}gold_reward": float(np.mean(judge(texts[name]))),
                      f"eval/{name}proxy_reward": float(np.mean(proxy)),
                      f"eval/{name}response_length": float(out.mask.sum(1).mean())})
      if not name:
        metrics["eval/kl"] = float(np.mean(kl))
    lines = [f"{p!r}\n  sft: {r!r}\n  {self.label}: {c!r}"
             for p, r, c in zip(self.prompts.texts, texts["ref_"], texts[""])][:self.cfg.sample.num_prompts]
    self.run_dir.write_samples(step, lines)
    return {**metrics, "samples": "\n\n".join(lines)}
