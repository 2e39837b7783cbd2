"""Sequence packing's gain in trained tokens (or pairs) per second: steps on packed rows
(data.pack) against one sequence (or pair) per row, on the same data, rows and model (the tiny
preset's). `--stage=sft` times SFT steps; `--stage=reward` the reward model's Bradley-Terry steps
and `--stage=dpo` DPO's (sigmoid; the reference's forward and the policy's forward and backward)
on pairs: one pair per row (chosen and rejected rows of seq_len) or packed (rows of 2 * seq_len
holding whole pairs); with `--share_prompt` also packed rows holding each pair's prompt once
(data.share_prompt).

Two length distributions: the embedded corpus's SFT pairs (its sentencepiece tokenizer, rows of
128 tokens; a preference pair is a prompt, its response and another prompt's response) and a
long-tailed one (lognormal lengths, median 64, capped at 512, rows of 512).
Each round times --steps steps of each layout, one after the other. The step shapes are the
same, so the gain is the ratio of trained tokens (pairs) per row over the whole dataset
(a few batches of a long-tailed distribution would misstate it) times the ratio of the median
step times, the latter taken round by round; the gain is the median over rounds. One JSON line each.

  python benchmarks/packing.py [--stage=sft|reward|dpo] [--rounds=3] [--steps=6] [--share_prompt]
"""

import dataclasses
import functools
import json
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from configs import dpo, reward, sft
from rlhf_jax import sharding
from rlhf_jax.data import batches, sources
from rlhf_jax.data.tokenizers import build_tokenizer
from rlhf_jax.models.config import ModelConfig, padded_vocab
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.core import setup
from rlhf_jax.training.core.optim import learning_rate_schedule, make_optimizer
from rlhf_jax.training.core.steps import eval_step, jit_steps, train_step
from rlhf_jax.training.preference.dpo_steps import compile_dpo_steps
from rlhf_jax.training.preference.reward_steps import reward_eval_step, reward_train_step
from rlhf_jax.training.rl import rl_state

flags.DEFINE_integer("rounds", 3, "Alternating timings of both layouts.")
flags.DEFINE_integer("steps", 6, "Batches per timing.")
flags.DEFINE_enum("stage", "sft", ["sft", "reward", "dpo"], "Whose steps: SFT's, or the reward model's or DPO's "
                  "on pairs.")
flags.DEFINE_bool("share_prompt", False, "reward, dpo: also time packed rows holding each pair's prompt once "
                  "(data.share_prompt); its gain is over one pair per row too.")
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


def as_triples(pairs, seed: int = 0):
  """(prompt, response, another prompt's response): preference pairs with the SFT pairs' lengths."""
  other = np.random.default_rng(seed).permutation(len(pairs))
  return [(p, r, pairs[j][1]) for (p, r), j in zip(pairs, other)]


def lm_steps(step_fn, eval_fn, **step_kwargs):
  """(train step, its state) for a stage whose state is a TrainState (SFT, the reward model)."""
  def build(cfg, model, tx, schedule, mesh, rules):
    state, shardings = setup.init_state(model, tx, mesh, rules, cfg.seed)
    train_fn = functools.partial(step_fn, model=model, tx=tx, schedule=schedule, accum_steps=1, **step_kwargs)
    return jit_steps(train_fn, functools.partial(eval_fn, model=model), shardings, mesh, rules)[0], state
  return build


def dpo_steps(cfg, model, tx, schedule, mesh, rules):
  """DPO's train step and its RL state: the policy and its frozen reference (as benchmarks/workloads.py's W2)."""
  del schedule
  state, shardings = rl_state.place_state({"policy": model, "reward": model}, tx, None, mesh, rules, cfg.seed, 0.0)
  return compile_dpo_steps(model, tx, cfg, shardings, mesh)[0], state


def preference_data(pairs, *args, **kwargs):
  return batches.PreferenceData(as_triples(pairs), *args, **kwargs)


@dataclasses.dataclass
class Stage:
  """What a stage's benchmark needs: its preset, data and steps."""
  get_config: object
  data: object  # (sequences, tokenizer, seq_len, batch_size, seed, pack) -> a Batcher
  build: object  # (cfg, model, tx, schedule, mesh, rules) -> (train step, state)
  unit: str  # what the gain counts per row


STAGES = {
    "sft": Stage(sft.get_config, batches.SFTData, lm_steps(train_step, eval_step, seed=0), "trained tokens"),
    "reward": Stage(reward.get_config, preference_data, lm_steps(reward_train_step, reward_eval_step), "pairs"),
    "dpo": Stage(dpo.get_config, preference_data, dpo_steps, "pairs"),
}


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


def real_tokens(data) -> int:
  """Tokens the dataset's rows hold (an SFT sequence, or both of a pair, as truncated; a pair's
  shared prompt once)."""
  if isinstance(data, batches.PreferenceData):
    return sum(len(c[0]) + len(r[0]) - s for c, r, s in zip(data.chosen, data.rejected, data.shared))
  return sum(len(t) for t in data.sequences)


LAYOUTS = {"padded": {"pack": False}, "packed": {"pack": True}, "shared": {"pack": True, "share_prompt": True}}


@dataclasses.dataclass
class Layout:
  """One layout's compiled step, its state (fed back after each timing) and its data's figures."""
  train: object
  state: object
  device_batches: list
  num_rows: int
  trained_per_row: float
  real_tokens: int


def measure(name: str, pairs, tokenizer, vocab: int, seq_len: int, stage: Stage) -> dict:
  cfg = stage.get_config("tiny")
  cfg.model.vocab_size, cfg.model.max_len = vocab, (2 if stage.unit == "pairs" else 1) * seq_len
  model = Transformer(ModelConfig.from_dict(dict(cfg.model)))
  tx, schedule = make_optimizer(cfg.optim, 1000), learning_rate_schedule(cfg.optim, 1000)
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules_of(cfg)
  rounds = {name: [] for name in ("padded", "packed", *(("shared",) if FLAGS.share_prompt else ()))}
  layouts = {}
  for layout in rounds:
    data = stage.data(pairs, tokenizer, seq_len, cfg.data.batch_size, cfg.seed, **LAYOUTS[layout])
    train, state = stage.build(cfg, model, tx, schedule, mesh, rules)
    device_batches = [sharding.put_batch(data.batch(s), mesh) for s in range(FLAGS.steps)]
    state, _ = timed_steps(train, state, device_batches[:1])  # compiles
    layouts[layout] = Layout(train, state, device_batches, data.num_rows, trained_per_row(data), real_tokens(data))
  for _ in range(FLAGS.rounds):
    for layout, entry in layouts.items():
      entry.state, seconds = timed_steps(entry.train, entry.state, entry.device_batches)
      rounds[layout].append(seconds)
  padded = layouts["padded"]
  # Tokens a row holds: an SFT row seq_len + 1 (inputs and the last target); one pair per row
  # its chosen and rejected rows of seq_len, a packed row of pairs 2 * seq_len.
  row_len = 2 * seq_len if stage.unit == "pairs" else seq_len + 1
  rows = cfg.data.batch_size
  result = {"stage": FLAGS.stage, "distribution": name, "sequences": len(pairs), "seq_len": seq_len,
            "unit": stage.unit}
  for layout, entry in layouts.items():
    result.update({f"rows_{layout}": entry.num_rows, f"fill_{layout}": entry.real_tokens / (entry.num_rows * row_len),
                   f"step_s_{layout}": statistics.median(rounds[layout]),
                   f"per_s_{layout}": rows * entry.trained_per_row / statistics.median(rounds[layout])})
  for layout in layouts.keys() - {"padded"}:  # the gain over one sequence (pair) per row
    density = layouts[layout].trained_per_row / padded.trained_per_row
    gains = [density * a / b for a, b in zip(rounds["padded"], rounds[layout])]
    suffix = "" if layout == "packed" else f"_{layout}"
    result.update({f"round_gains{suffix}": gains, f"gain{suffix}": statistics.median(gains)})
  return {**result, "device": jax.devices()[0].device_kind, "rounds": FLAGS.rounds, "steps": FLAGS.steps}


def main(argv):
  del argv
  if FLAGS.share_prompt and STAGES[FLAGS.stage].unit != "pairs":
    raise SystemExit(f"--share_prompt: a prompt is shared by a preference pair (--stage=reward or dpo), "
                     f"not in --stage={FLAGS.stage}")
  cfg = sft.get_config("tiny")
  for name, (pairs, tokenizer, vocab), seq_len in (("embedded", embedded_pairs(cfg), cfg.data.seq_len),
                                                   ("long_tailed", long_tailed_pairs(), 512)):
    result = measure(name, pairs, tokenizer, vocab, seq_len, STAGES[FLAGS.stage])
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}), flush=True)


if __name__ == "__main__":
  app.run(main)
