"""Throughput of the compiled steps for a config preset, printed as one JSON line.

  python benchmarks/run.py --config=configs/pretrain.py:tiny --workload=all
  python benchmarks/run.py --config=configs/pretrain.py:gpt2_small --workload=train

Workloads: `train` (pretraining step tokens/s, including the optimizer update) and `sampler`
(KV-cache generation tokens/s, every row generating exactly --new_tokens). Compile time is
reported apart from steady-state time; steady-state figures are medians over --repeats.
The model is randomly initialised: throughput does not depend on the weights.
"""

import functools
import json
import platform
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from rlhf_jax import sharding
from rlhf_jax.models.config import ModelConfig, padded_vocab
from rlhf_jax.models.sampling import SamplingParams, sample
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training import setup
from rlhf_jax.training.optim import learning_rate_schedule, make_optimizer
from rlhf_jax.training.steps import train_step

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/pretrain.py:tiny", "Stage config and preset.")
flags.DEFINE_enum("workload", "all", ["all", "train", "sampler"], "What to time.")
flags.DEFINE_integer("repeats", 10, "Timed repetitions after warm-up.")
flags.DEFINE_integer("prompt_len", 16, "Sampler prompt length.")
flags.DEFINE_integer("new_tokens", 32, "Sampler tokens generated per row.")
flags.DEFINE_integer("sample_batch", 64, "Sampler batch size.")

BYTE_VOCAB = 259


def timed(fn, repeats: int) -> tuple[float, float]:
  """(first call seconds, including compilation; median of `repeats` later calls)."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


def model_of(cfg) -> ModelConfig:
  """The preset's model; vocab_size 0 takes the configured tokenizer's size (bytes: 259)."""
  tokenizer_vocab = cfg.tokenizer.vocab_size if cfg.tokenizer.kind == "sentencepiece" else BYTE_VOCAB
  return ModelConfig.from_dict(dict(cfg.model), vocab_size=cfg.model.vocab_size or padded_vocab(tokenizer_vocab))


def bench_train(cfg, repeats: int) -> dict:
  model = Transformer(model_of(cfg))
  tx = make_optimizer(cfg.optim, 1000)
  mesh = sharding.make_mesh(cfg.mesh)
  state, shardings = setup.init_state(model, tx, mesh, sharding.rules_of(cfg), cfg.seed)
  step = jax.jit(functools.partial(train_step, model=model, tx=tx, schedule=learning_rate_schedule(cfg.optim, 1000),
                                   accum_steps=cfg.optim.accum_steps, seed=0),
                 in_shardings=(shardings, sharding.batch_sharding(mesh)), donate_argnums=0)
  b, t = cfg.data.batch_size, cfg.data.seq_len
  tokens = np.random.default_rng(0).integers(0, model.cfg.vocab_size, (b, t + 1)).astype(np.int32)
  ones = np.ones((b, t), np.int32)
  batch = sharding.put_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": ones,
                              "loss_mask": ones}, mesh)
  holder = {"state": state}

  def one_step():
    holder["state"], metrics = step(holder["state"], batch)
    return metrics["loss"]

  first, median = timed(one_step, repeats)
  return {"train_compile_s": first - median, "train_step_s": median, "train_tokens_per_s": b * t / median,
          "train_batch": b, "train_seq_len": t}


def bench_sampler(cfg, repeats: int) -> dict:
  model = Transformer(model_of(cfg))
  mesh = sharding.make_mesh(cfg.mesh)
  tx = make_optimizer(cfg.optim, 1000)
  params = setup.init_state(model, tx, mesh, sharding.rules_of(cfg), cfg.seed)[0].params
  b, p, n = FLAGS.sample_batch, FLAGS.prompt_len, FLAGS.new_tokens
  # eos_id -1 never matches, so every row generates exactly n tokens.
  sampler = jax.jit(functools.partial(sample, model, max_new_tokens=n, eos_id=-1, pad_id=0))
  prompts = jnp.asarray(np.random.default_rng(1).integers(0, 256, (b, p)), jnp.int32)
  mask = jnp.ones((b, p), jnp.int32)
  settings = SamplingParams.make(temperature=0.7)
  first, median = timed(lambda: sampler(params, prompts, mask, jax.random.key(0), settings).tokens, repeats)
  return {"sampler_compile_s": first - median, "sampler_s": median, "sampler_tokens_per_s": b * n / median,
          "sampler_batch": b, "sampler_prompt_len": p, "sampler_new_tokens": n}


def main(argv):
  del argv
  cfg = FLAGS.config
  result = {"config": FLAGS["config"].config_filename, "params_m": model_of(cfg).num_params() / 1e6,
            "device": str(jax.devices()[0].device_kind), "num_devices": jax.device_count(),
            "jax": jax.__version__, "host": platform.processor() or platform.machine()}
  if FLAGS.workload in ("all", "train"):
    result.update(bench_train(cfg, FLAGS.repeats))
  if FLAGS.workload in ("all", "sampler"):
    result.update(bench_sampler(cfg, FLAGS.repeats))
  print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
  app.run(main)
