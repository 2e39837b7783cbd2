"""Sequence packing's gain in trained tokens per second: SFT steps on packed rows (data.pack)
against one sequence per row, on the same sequences, rows and model (the tiny preset's).

Two length distributions: the embedded corpus's SFT pairs (its sentencepiece tokenizer, rows of
128 tokens) and a long-tailed one (lognormal lengths, median 64, capped at 512, rows of 512).
Each round times --steps steps of each layout, one after the other. The step shapes are the
same, so the gain is the ratio of trained (response) tokens per row over the whole dataset
(a few batches of a long-tailed distribution would misstate it) times the ratio of the median
step times, the latter taken round by round; the gain is the median over rounds. One JSON line each.

  python benchmarks/packing.py [--rounds=3] [--steps=6]
"""

import dataclasses
import functools
import json
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from configs import sft
from rlhf_jax import sharding
from rlhf_jax.data import batches, sources
from rlhf_jax.data.tokenizers import build_tokenizer
from rlhf_jax.models.config import ModelConfig, padded_vocab
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training import setup
from rlhf_jax.training.optim import learning_rate_schedule, make_optimizer
from rlhf_jax.training.steps import eval_step, jit_steps, train_step

flags.DEFINE_integer("rounds", 3, "Alternating timings of both layouts.")
flags.DEFINE_integer("steps", 6, "Batches per timing.")
FLAGS = flags.FLAGS


class Fake:
  """What SFTData reads of a tokenizer, for token ids made here."""
  bos_id, eos_id, pad_id = 1, 2, 0


def embedded_pairs(cfg):
  texts = sources.load_pairs(cfg.data, "train")
  tokenizer = build_tokenizer("sentencepiece", [p + r for p, r in texts[:4000]], 1024)
  return [(tokenizer.encode(p), tokenizer.encode(r)) for p, r in texts], tokenizer, padded_vocab(tokenizer.vocab_size)


def long_tailed_pairs(n: int = 2000, cap: int = 512):
  rng = np.random.default_rng(0)
  lengths = np.clip(rng.lognormal(np.log(64), 0.9, n).astype(int), 8, cap - 3)
  prompt = np.maximum(1, lengths // 4)
  ids = lambda k: rng.integers(3, 1024, k).tolist()
  return [(ids(p), ids(t - p)) for p, t in zip(prompt, lengths)], Fake(), 1024


def timed_steps(train, state, device_batches):
  """(state, median seconds of a step) over the batches."""
  times = []
  for batch in device_batches:
    start = time.perf_counter()
    state, metrics = train(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return state, statistics.median(times)


def trained_per_row(data) -> float:
  """Trained targets per row, over every row of the dataset."""
  rows = np.arange(data.num_rows)
  return sum(float(data.rows(rows[i:i + 1024])["loss_mask"].sum()) for i in range(0, len(rows), 1024)) / len(rows)


@dataclasses.dataclass
class Layout:
  """One layout's compiled step, its state (fed back after each timing) and its data's figures."""
  train: object
  state: object
  device_batches: list
  num_rows: int
  trained_per_row: float


def measure(name: str, pairs, tokenizer, vocab: int, seq_len: int) -> dict:
  cfg = sft.get_config("tiny")
  cfg.model.vocab_size, cfg.model.max_len = vocab, seq_len
  model = Transformer(ModelConfig.from_dict(dict(cfg.model)))
  tx, schedule = make_optimizer(cfg.optim, 1000), learning_rate_schedule(cfg.optim, 1000)
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules_of(cfg)
  train_fn = functools.partial(train_step, model=model, tx=tx, schedule=schedule, accum_steps=1, seed=0)
  layouts, rounds = {}, {"padded": [], "packed": []}
  for layout in rounds:
    data = batches.SFTData(pairs, tokenizer, seq_len, cfg.data.batch_size, cfg.seed, pack=layout == "packed")
    state, shardings = setup.init_state(model, tx, mesh, rules, cfg.seed)
    train, _ = jit_steps(train_fn, functools.partial(eval_step, model=model), shardings, mesh, rules)
    device_batches = [sharding.put_batch(data.batch(s), mesh) for s in range(FLAGS.steps)]
    state, _ = timed_steps(train, state, device_batches[:1])  # compiles
    layouts[layout] = Layout(train, state, device_batches, data.num_rows, trained_per_row(data))
  for _ in range(FLAGS.rounds):
    for layout, entry in layouts.items():
      entry.state, seconds = timed_steps(entry.train, entry.state, entry.device_batches)
      rounds[layout].append(seconds)
  padded, packed = layouts["padded"], layouts["packed"]
  density = packed.trained_per_row / padded.trained_per_row
  gains = [density * a / b for a, b in zip(rounds["padded"], rounds["packed"])]
  real = sum(len(p) + len(r) + 2 for p, r in pairs)
  rows = cfg.data.batch_size
  return {"distribution": name, "sequences": len(pairs), "seq_len": seq_len,
          "rows_padded": padded.num_rows, "rows_packed": packed.num_rows,
          "fill_padded": real / (padded.num_rows * (seq_len + 1)),
          "fill_packed": real / (packed.num_rows * (seq_len + 1)),
          "step_s_padded": statistics.median(rounds["padded"]), "step_s_packed": statistics.median(rounds["packed"]),
          "tokens_per_s_padded": rows * padded.trained_per_row / statistics.median(rounds["padded"]),
          "tokens_per_s_packed": rows * packed.trained_per_row / statistics.median(rounds["packed"]),
          "round_gains": gains, "gain": statistics.median(gains), "device": jax.devices()[0].device_kind,
          "rounds": FLAGS.rounds, "steps": FLAGS.steps}


def main(argv):
  del argv
  cfg = sft.get_config("tiny")
  for name, (pairs, tokenizer, vocab), seq_len in (("embedded", embedded_pairs(cfg), cfg.data.seq_len),
                                                   ("long_tailed", long_tailed_pairs(), 512)):
    result = measure(name, pairs, tokenizer, vocab, seq_len)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}), flush=True)


if __name__ == "__main__":
  app.run(main)
