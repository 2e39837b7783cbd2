"""Best-of-n sampling as a method beside RL: n responses from the SFT policy, the proxy reward's
best kept. One pass draws N = max(ns) responses per held-out prompt; each n's expected gold and
proxy reward is the unbiased estimate over every n-subset of the N (Nakano et al. 2021, Gao et
al. 2022): with the N sorted by proxy reward, the i-th lowest is the best of a random n-subset
with probability C(i - 1, n - 1) / C(N, n). Its KL from the SFT policy is log n - (n - 1) / n
(Stiennon et al. 2020), exact for distinct proxy scores.
"""

import math

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_jax import judges, sharding
from rlhf_jax.data.prompts import prompt_set
from rlhf_jax.errors import UserError
from rlhf_jax.metrics_log import MetricsLog
from rlhf_jax.models.sampling import SamplingParams
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.core import setup, trainer
from rlhf_jax.training.core.steps import jit_sampler
from rlhf_jax.training.policy import frozen
from rlhf_jax.training.policy.policy_state import policy_params
from rlhf_jax.workdir import RunDir


def kl_of(n: int) -> float:
  """KL(best-of-n || the sampling policy), nats."""
  return math.log(n) - (n - 1) / n


def best_of_n_weights(proxy: np.ndarray, n: int) -> np.ndarray:
  """[prompts, N] weights, summing to 1 per prompt: the chance that each sample is the
  proxy's best of a uniformly random n-subset of the N."""
  big_n = proxy.shape[1]
  if not 1 <= n <= big_n:
    raise ValueError(f"n={n} needs 1 <= n <= {big_n} samples")
  rank = np.argsort(np.argsort(proxy, axis=1, kind="stable"), axis=1)  # 0 = lowest
  chance = np.array([math.comb(i, n - 1) for i in range(big_n)], float) / math.comb(big_n, n)
  return chance[rank]


def run(cfg, workdir: str) -> dict:
  run_dir = RunDir(workdir)
  sft_run, reward_run = setup.source_run(cfg), frozen.reward_run_of(cfg)
  if sft_run is None:
    raise UserError("best-of-n samples an SFT run: set init_from (or keep config.upstream)")
  if not cfg.ns or min(cfg.ns) < 1:
    raise UserError(f"ns={tuple(cfg.ns)}: give one or more n >= 1")
  tokenizer = setup.prepare_tokenizer(cfg, run_dir, sft_run)
  policy = Transformer(setup.model_config(cfg, tokenizer, sft_run))
  scorer = Transformer(setup.frozen_model_config(reward_run))
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules_of(cfg)
  sources = {"policy": (policy, sft_run, None), "reward": (scorer, reward_run, None)}
  state, shardings = frozen.load_policy_state(sources, optax.identity(), mesh, rules, cfg.seed)
  trainer.record(run_dir, cfg, trainer.RunFiles(tokenizer, policy.cfg))
  prompts = prompt_set(cfg, tokenizer, "eval")
  proxy, gold = draw_and_score(cfg, state, shardings, mesh, rules, policy, scorer, reward_run, prompts, tokenizer)
  rows = [{"n": n, "kl": kl_of(n), "gold_reward": float(np.mean((best_of_n_weights(proxy, n) * gold).sum(1))),
           "proxy_reward": float(np.mean((best_of_n_weights(proxy, n) * proxy).sum(1)))} for n in sorted(cfg.ns)]
  log = MetricsLog(run_dir, 0, max(cfg.ns))
  for row in rows:  # one row per n, at step n, as an RL run's evaluations are rows per step
    log.write(row["n"], {"eval/kl": row["kl"], "eval/gold_reward": row["gold_reward"],
                         "eval/proxy_reward": row["proxy_reward"], "eval/ref_gold_reward": rows[0]["gold_reward"]})
  log.close()
  best = rows[-1]
  summary = {"step": best["n"], "eval/gold_reward": best["gold_reward"], "eval/proxy_reward": best["proxy_reward"],
             "eval/kl": best["kl"], "eval/ref_gold_reward": float(gold.mean()), "best_of_n": rows,
             "samples_per_prompt": proxy.shape[1], "prompts": proxy.shape[0]}
  run_dir.write_json("summary.json", summary)
  logging.info("best-of-n: %s", ", ".join(f"n={r['n']} gold {r['gold_reward']:.3f} KL {r['kl']:.2f}" for r in rows))
  return summary


def draw_and_score(cfg, state, shardings, mesh, rules, policy, scorer, reward_run, prompts, tokenizer):
  """([prompts, N] proxy rewards, [prompts, N] gold rewards) of N = max(ns) samples per prompt."""
  sampler = jit_sampler(policy, cfg.sample.max_new_tokens, tokenizer, policy_params(shardings), mesh, rules,
                        cfg.sample)
  scored = jax.jit(sharding.with_rules(frozen.proxy_score_fn(scorer, reward_run), mesh, rules),
                   out_shardings=sharding.replicated(mesh))
  judge = judges.get_judge(cfg.judge)
  tokens, mask = jnp.asarray(prompts.tokens), jnp.asarray(prompts.mask)
  draws = []
  for draw in range(max(cfg.ns)):  # all dispatched first: the device samples while the host judges
    rng = jax.random.fold_in(jax.random.PRNGKey(cfg.seed + 1), draw)
    out = sampler(policy_params(state), tokens, mask, rng, SamplingParams.make(cfg.sample.temperature))
    full, full_mask = jnp.concatenate([tokens, out.tokens], 1), jnp.concatenate([mask, out.mask], 1)
    draws.append((out, scored(state, full, full_mask, out)))
  proxy, gold = [], []
  for out, scores in draws:
    host = jax.device_get(out)
    proxy.append(np.asarray(jax.device_get(scores)))
    gold.append(np.asarray(judge([tokenizer.decode(t[m > 0]) for t, m in zip(host.tokens, host.mask)]), float))
  return np.stack(proxy, 1), np.stack(gold, 1)
