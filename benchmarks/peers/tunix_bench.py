"""Google Tunix's version of two benchmark workloads, on CPU JAX. Prints ONE JSON line on stdout.

  benchmarks/peers/.venv-tunix/bin/python benchmarks/peers/tunix_bench.py --workload=w1 [--repeats=5] [--cpu_devices=1]

w1 PPO through `tunix.rl.ppo.ppo_learner.PPOLearner` (policy, reference, reward model, critic); w4 RLOO
through `tunix.rl.grpo.grpo_learner.GRPOLearner` with Tunix's "rloo" (leave-one-out) advantage estimator.
Model: Tunix's Qwen2 shrunk to our tiny GPT-2 (tunix_shape.py), random init, float32. Each learner runs
1 + repeats global steps (generation, scoring, updates) through its own `train()`; every step is stamped as it
starts, the first step is the warm-up (compilation), `seconds` is the median of the rest. Everything but the
JSON line goes to stderr. Run `bash benchmarks/peers/setup.sh tunix` first.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the CPU peer: never look for an accelerator

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import contextlib
import dataclasses
import importlib.metadata
import json
import logging
import statistics
import sys
import time
import warnings

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tunix.models.qwen2 import model as qwen2
from tunix.rl import rl_cluster as rl_cluster_lib
from tunix.rl.grpo import grpo_learner
from tunix.rl.ppo import ppo_learner
from tunix.rl.rollout import base_rollout

import tunix_shape  # pylint: disable=g-import-not-at-top  (this script's own directory is on sys.path)

VOCAB, PROMPT, RESPONSE, BATCH, K = 256, 16, 32, 64, 4
PAD, EOS = VOCAB, VOCAB + 1  # outside the model's 256 logits: never sampled, so every response is 32 tokens
LR, KL, TEMPERATURE = 1e-5, 0.05, 0.7
Role = rl_cluster_lib.Role


def quiet():
  """absl / JAX logging and warnings off: only the JSON line may reach stdout."""
  warnings.filterwarnings("ignore")
  logging.disable(logging.WARNING)


class CharTokenizer:
  """One character per token id (U+0100 + id), so ids round-trip through Tunix's text prompts exactly.
  Pad 256 and EOS 257 lie outside the model's vocabulary; no BOS is prepended (bos_id is None)."""

  def encode(self, text: str, **unused) -> list:
    return [ord(c) - 0x100 for c in text]

  def decode(self, ids, **unused) -> str:
    return "".join(chr(0x100 + int(i)) for i in ids if 0 <= int(i) < VOCAB)

  def bos_id(self):
    return None

  def eos_id(self) -> int:
    return EOS

  def pad_id(self) -> int:
    return PAD


class ScalarQwen2(qwen2.Qwen2):
  """Qwen2 with a 1-wide output head instead of the tied LM head: Tunix's contract for a critic or a
  reward model (`common.compute_score` reads scores of shape [B, T, 1] from the model's output)."""

  def __init__(self, config: qwen2.ModelConfig, *, rngs: nnx.Rngs):
    config = dataclasses.replace(config, use_tied_embedding=False)
    super().__init__(config, rngs=rngs)
    self.lm_head = qwen2.Einsum(einsum_str="BTD,DV->BTV", shape=(config.embed_dim, 1), rngs=rngs,
                                sharding=config.shd_config.emb_dv, dtype=config.dtype,
                                param_dtype=config.param_dtype)


def model_config() -> qwen2.ModelConfig:
  return qwen2.ModelConfig(**tunix_shape.qwen2_fields())


def make_model(cls, mesh, seed: int = 0):
  """A random-initialised model (seed 0: the policy and its reference start equal), on the mesh."""
  with mesh:
    return cls(model_config(), rngs=nnx.Rngs(params=seed))


def mesh_and_roles():
  """All CPU devices on Tunix's `fsdp` axis (default one: XLA's intra-op threads spread each op over the
  cores), every role on that mesh: the rollout shares the actor's weights, so Tunix syncs nothing."""
  devices = jax.devices()
  mesh = jax.sharding.Mesh(np.array(devices).reshape(len(devices), 1), ("fsdp", "tp"))  # Auto axes, Tunix's
  return mesh, {role: mesh for role in Role}


def cluster(mesh, roles, steps_per_update: int, **models) -> rl_cluster_lib.RLCluster:
  """An RLCluster with AdamW (lr 1e-5) for actor and critic, the vanilla (Tunix sampler) rollout: 16-token
  prompts, exactly 32 new tokens at temperature 0.7 over the full vocabulary, KV cache of 48."""
  training = rl_cluster_lib.RLTrainingConfig(
      actor_optimizer=optax.adamw(LR), critic_optimizer=optax.adamw(LR), eval_every_n_steps=10 ** 9,
      max_steps=steps_per_update, metrics_logging_options=None, pbar_description=None)
  rollout = base_rollout.RolloutConfig(max_tokens_to_generate=RESPONSE, max_prompt_length=PROMPT,
                                       kv_cache_size=PROMPT + RESPONSE, temperature=TEMPERATURE, top_p=1.0,
                                       top_k=None, eos_tokens=[EOS])
  config = rl_cluster_lib.ClusterConfig(role_to_mesh=roles, rollout_engine="vanilla", offload_to_cpu=False,
                                        training_config=training, rollout_config=rollout)
  return rl_cluster_lib.RLCluster(tokenizer=CharTokenizer(), cluster_config=config, **models)


def prompt_batches(steps: int, rows: int) -> list:
  """`steps` batches of `rows` random 16-token prompts (ids 1..255), as the text Tunix's learners take."""
  ids = np.random.default_rng(0).integers(1, VOCAB, size=(steps, rows, PROMPT))
  tok = CharTokenizer()
  return [{"prompts": np.array([tok.decode(row) for row in batch])} for batch in ids]


def timed_generation(rl: rl_cluster_lib.RLCluster) -> list:
  """Wraps the cluster's `generate` (the rollout) to time each call and check that every response is
  exactly 32 tokens; gives the list its times are appended to."""
  times, generate = [], rl.generate

  def timed(*args, **kwargs):
    start = time.perf_counter()
    out = generate(*args, **kwargs)  # tokens come back as host arrays: the sampling is done
    times.append(time.perf_counter() - start)
    assert all(len(t) == RESPONSE for t in out.tokens), sorted({len(t) for t in out.tokens})
    return out

  rl.generate = timed
  return times


def timed_train(learner, batches: list) -> tuple[list, dict]:
  """Runs the learner over the batches, one global step each; a step lasts from its start to the next
  one's (the last: to its end, after its weights are ready), as TRL's step-end stamps do. Also gives
  the share of the timed steps spent in generation."""
  generation = timed_generation(learner.rl_cluster)
  starts, ends, run = [], [], learner._run_global_step  # pylint: disable=protected-access

  def stamped(*args, **kwargs):
    starts.append(time.perf_counter())
    run(*args, **kwargs)
    jax.block_until_ready(nnx.state(learner.rl_cluster.actor_trainer.model))
    ends.append(time.perf_counter())

  learner._run_global_step = stamped  # pylint: disable=protected-access
  learner.train(batches)
  durations = [float(d) for d in np.diff(starts + ends[-1:])]
  return durations, {"generation_share": sum(generation[1:]) / sum(durations[1:])}


def w1_ppo(steps: int):
  """PPO: 64 prompts x 16 -> 32 tokens; policy, frozen reference, reward model and critic; 4 epochs x 1
  minibatch of 64 (Tunix's num_iterations = 4, mini_batch_size = 64); GAE; KL 0.05 in the reward."""
  mesh, roles = mesh_and_roles()
  rl = cluster(mesh, roles, steps * 4, actor=make_model(qwen2.Qwen2, mesh), reference=make_model(qwen2.Qwen2, mesh),
               critic=make_model(ScalarQwen2, mesh, 1), reward=make_model(ScalarQwen2, mesh, 2))
  config = ppo_learner.PPOConfig(num_iterations=4, beta=KL, gamma=1.0, gae_lambda=0.95, epsilon=0.2)
  learner = ppo_learner.PPOLearner(rl_cluster=rl, ppo_config=config)
  notes = ["tunix.rl.ppo.ppo_learner.PPOLearner: GAE advantages, clipped policy loss, clipped value loss; "
           "KL (low_var_kl, 0.05) subtracted from the per-token reward",
           "critic and reward model: Tunix's Qwen2 with a 1-wide output head (ScalarQwen2), as Tunix scores them"]
  return *timed_train(learner, prompt_batches(steps, BATCH)), notes


def reward_model_fn(mesh):
  """Tunix's GRPO learner takes only host reward functions of (prompts, completions) text: this one
  re-encodes them (one character per id) and scores prompt + completion with a reward model, jitted,
  at the last token, as our w4's reward model does."""
  scorer = make_model(ScalarQwen2, mesh, 2)
  graphdef, state = nnx.split(scorer)
  tok = CharTokenizer()

  @jax.jit
  def score(state, tokens):
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    mask = jnp.tril(jnp.ones((tokens.shape[1],) * 2, bool))[None]
    out, _ = nnx.merge(graphdef, state)(tokens, positions, None, mask)
    return out[:, -1, 0]

  def reward(prompts, completions, **unused):
    tokens = np.array([tok.encode(p) + tok.encode(c) for p, c in zip(prompts, completions)], np.int32)
    return np.asarray(score(state, tokens)).tolist()

  return reward


def w4_rloo(steps: int):
  """RLOO: 16 prompts x k=4 = 64 completions of 32 tokens; reward model; KL 0.05 to a frozen reference;
  one update per batch (num_iterations = 1, mini_batch_size = the batch)."""
  mesh, roles = mesh_and_roles()
  rl = cluster(mesh, roles, steps, actor=make_model(qwen2.Qwen2, mesh), reference=make_model(qwen2.Qwen2, mesh))
  config = grpo_learner.GRPOConfig(num_generations=K, num_iterations=1, beta=KL, epsilon=0.2,
                                   advantage_estimator="rloo")
  learner = grpo_learner.GRPOLearner(rl_cluster=rl, algo_config=config, reward_fns=[reward_model_fn(mesh)])
  notes = ["tunix.rl.grpo.grpo_learner.GRPOLearner with advantage_estimator='rloo' (Tunix's leave-one-out "
           "estimator: reward minus the mean of the other k-1); policy loss 'grpo' (clipped ratio, KL 0.05 "
           "to the reference as a loss term, sequence-mean-token-mean); with num_iterations=1 Tunix computes "
           "no separate old log-probs",
           "GRPOLearner takes host reward functions only: the reward model (ScalarQwen2) runs jitted inside "
           "one, on the re-encoded prompt + completion text (48 tokens), its last-token score"]
  return *timed_train(learner, prompt_batches(steps, BATCH // K)), notes


WORKLOADS = {"w1": w1_ppo, "w4": w4_rloo}


def versions() -> dict:
  return {name: importlib.metadata.version(pkg) for name, pkg in
          (("tunix", "google-tunix"), ("jax", "jax"), ("flax", "flax"), ("optax", "optax"))}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
  parser.add_argument("--repeats", type=int, default=5, help="Timed steps after the warm-up one.")
  parser.add_argument("--cpu_devices", type=int, default=1, help="JAX CPU devices, all on Tunix's fsdp axis.")
  flags = parser.parse_args()
  jax.config.update("jax_num_cpu_devices", flags.cpu_devices)
  quiet()
  with contextlib.redirect_stdout(sys.stderr):  # progress bars and banners
    durations, extra, notes = WORKLOADS[flags.workload](1 + flags.repeats)
  assert len(durations) == 1 + flags.repeats, durations
  shared = ["model: Tunix's Qwen2 at our shape (4 layers, d_model 128, 4 heads, vocab 256, tied embeddings, "
            f"f32) with RMSNorm, RoPE, q/k/v biases only and a SwiGLU MLP of width "
            f"{tunix_shape.swiglu_hidden(tunix_shape.GPT2['d_ff'])} (FLOPs per token "
            f"{tunix_shape.flops_ratio():.4f}x GPT-2's GELU MLP of 512), random init",
            "pad/EOS ids (256/257) lie outside the model vocabulary: no early stop, every response 32 tokens",
            f"{jax.device_count()} JAX CPU device(s) on Tunix's fsdp axis, every role colocated on them"]
  result = {"workload": flags.workload, "seconds": statistics.median(durations[1:]),
            "compile_or_warmup_s": durations[0], "step_seconds": durations[1:], **extra, "repeats": flags.repeats,
            **versions(), "devices": jax.device_count(), "notes": "; ".join(notes + shared)}
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
