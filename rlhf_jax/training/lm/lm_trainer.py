"""Pretraining and SFT: data, model and evaluation around the shared host loop."""

import dataclasses
from typing import NamedTuple

from absl import logging
import jax
import numpy as np

from rlhf_jax import flops, memory, sharding
from rlhf_jax.data import batches, sources
from rlhf_jax.data.prompts import Prompts, as_chat, encode_prompts, openings, token_counter
from rlhf_jax.envs import tools
from rlhf_jax.models.sampling import SamplingParams, is_stop
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.core import setup, trainer
from rlhf_jax.training.core.compute import StepCost
from rlhf_jax.training.core.loop import Loop
from rlhf_jax.training.core.optim import learning_rate_schedule, make_optimizer
from rlhf_jax.training.core.state import model_params
from rlhf_jax.training.core.steps import compile_lm_steps
from rlhf_jax.workdir import RunDir


class LMData(NamedTuple):
  train: batches.Batcher
  eval: batches.Batcher
  prompts: Prompts


def run(cfg, workdir: str) -> dict:
  """Trains one pretraining or SFT stage in `workdir`; returns its summary."""
  run_dir = RunDir(workdir)
  source = setup.source_run(cfg)
  tokenizer = setup.prepare_tokenizer(cfg, run_dir, source)
  model_cfg = setup.model_config(cfg, tokenizer, source)
  data = prepare_data(cfg, tokenizer)
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules_of(cfg)
  memory.check(cfg, model_cfg, mesh)
  logging.info("model: %s, %.2fM parameters", model_cfg, model_cfg.num_params() / 1e6)
  model = Transformer(model_cfg)
  tx = make_optimizer(cfg.optim, cfg.train.num_steps)
  state, shardings = setup.init_state(model, tx, mesh, rules, cfg.seed)
  # The latest checkpoint if there is one, else the source's weights.
  start = lambda s, where, checkpoints, _: setup.start_state(s, where, checkpoints, source, mesh, rules,
                                                             cfg.lora.continue_adapters)
  state, checkpointer, _ = trainer.checkpointed(cfg, run_dir, state, shardings, restore=start)
  trainer.record(run_dir, cfg, trainer.RunFiles(tokenizer, model_cfg, setup.lora_base(cfg, source, run_dir)))
  steps = compile_lm_steps(model, tx, learning_rate_schedule(cfg.optim, cfg.train.num_steps),
                           shardings, mesh, cfg, tokenizer)
  evaluate = LMEvaluator(cfg, run_dir, steps, data, mesh, tokenizer)
  next_batch = lambda step: sharding.put_batch(data.train.batch(step), mesh)
  cost = StepCost(flops.train(model_cfg, cfg.data.batch_size, cfg.data.seq_len))
  summary = Loop(cfg.train, run_dir, steps.train, next_batch, evaluate, checkpointer, cost=cost).train(state)
  extras = {"data/truncated_pairs": data.train.num_truncated} if cfg.stage == "sft" else {}
  return trainer.finish(run_dir, summary, **extras)


def prepare_data(cfg, tokenizer) -> LMData:
  d = cfg.data
  where = dict(process_index=jax.process_index(), process_count=jax.process_count())
  if cfg.stage == "sft":
    encode = lambda pairs: [(tokenizer.encode(p), *encode_response(r, tokenizer)) for p, r in pairs]
    chat = lambda pairs: list(zip(as_chat([p for p, _ in pairs], tokenizer, d), [r for _, r in pairs]))
    count = token_counter(tokenizer)
    eval_pairs = chat(sources.load_pairs(d, "eval", count))
    train = batches.SFTData(encode(chat(sources.load_pairs(d, "train", count))), tokenizer, d.seq_len, d.batch_size,
                            cfg.seed, pack=d.pack, **where)
    evaluation = batches.SFTData(encode(eval_pairs), tokenizer, d.seq_len, d.batch_size, cfg.seed,
                                 shuffle=False, pack=d.pack, **where)
    logging.info("SFT: %d train pairs (%d truncated) in %d rows", len(train.sequences), train.num_truncated,
                 train.num_rows)
    prompt_texts = [p for p, _ in eval_pairs]
  else:
    eval_docs = sources.load_documents(d, "eval")
    bos = tokenizer.bos_id if d.pack else None  # documents as segments
    train = batches.PretrainData(batches.token_stream(sources.load_documents(d, "train"), tokenizer),
                                 d.seq_len, d.batch_size, cfg.seed, bos_id=bos, **where)
    evaluation = batches.PretrainData(batches.token_stream(eval_docs, tokenizer), d.seq_len, d.batch_size,
                                      cfg.seed, shuffle=False, bos_id=bos, **where)
    logging.info("pretraining: %d windows of %d tokens", train.num_rows, d.seq_len)
    prompt_texts = openings(eval_docs, d, cfg.seed)
  max_prompt = max(1, min(d.seq_len, cfg.model.max_len) - cfg.sample.max_new_tokens)
  return LMData(train, evaluation, encode_prompts(prompt_texts[:cfg.sample.num_prompts], tokenizer, max_prompt))


def encode_response(text: str, tokenizer) -> tuple:
  """(ids,) for a one-turn response; (ids, loss mask) for a demonstration with tool results,
  each piece encoded apart, as RL's trajectories are (token in, token out)."""
  pieces = tools.split_observations(text)
  if all(policy for _, policy in pieces):
    return (tokenizer.encode(text),)
  encoded = [(tokenizer.encode(piece), policy) for piece, policy in pieces]
  return ([i for ids, _ in encoded for i in ids], [int(policy) for ids, policy in encoded for _ in ids])


@dataclasses.dataclass
class LMEvaluator:
  """Held-out loss and accuracy, and samples of held-out prompts written to samples/."""
  cfg: object
  run_dir: RunDir
  steps: object
  data: LMData
  mesh: object
  tokenizer: object

  def __call__(self, state, step: int) -> dict:
    params, sums = model_params(state), None
    for batch in batches.eval_batches(self.data.eval, self.cfg.train.eval_batches):
      out = jax.device_get(self.steps.eval(params, sharding.put_batch(batch, self.mesh)))
      sums = out if sums is None else {k: sums[k] + out[k] for k in out}
    tokens = max(float(sums["tokens"]), 1.0)
    metrics = {"eval/loss": float(sums["nll"]) / tokens, "eval/accuracy": float(sums["correct"]) / tokens}
    metrics["eval/perplexity"] = float(np.exp(metrics["eval/loss"]))
    return {**metrics, **self.write_samples(params, step)}

  def write_samples(self, params, step: int) -> dict:
    """Samples continuations of held-out prompts into samples/step_N.txt."""
    s, prompts = self.cfg.sample, self.data.prompts
    sampling = SamplingParams.make(s.temperature, s.top_k, s.top_p, s.greedy)
    rng = jax.random.fold_in(jax.random.key(self.cfg.seed + 1), step)
    out = jax.device_get(self.steps.sample(params, prompts.tokens, prompts.mask, rng, sampling))
    texts = [self.tokenizer.decode(t[m > 0]) for t, m in zip(out.tokens, out.mask)]
    lines = [f"{p!r} -> {c!r}" for p, c in zip(prompts.texts, texts)]
    self.run_dir.write_samples(step, lines)
    # Under the mask: PAD may be a stop id (Qwen's <|endoftext|>), or EOS itself (GPT-2).
    ended = (is_stop(out.tokens, self.tokenizer.stop_ids) & (out.mask > 0)).any(axis=1)
    return {"eval/sample_length": float(out.mask.sum(axis=1).mean()),
            "eval/sample_eos_fraction": float(ended.mean()), "samples": "\n\n".join(lines)}
