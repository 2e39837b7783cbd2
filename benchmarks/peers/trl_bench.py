"""Hugging Face TRL's version of our benchmark workloads, on CPU torch. Prints ONE JSON line on stdout.

  benchmarks/peers/.venv/bin/python benchmarks/peers/trl_bench.py --workload=w1 [--repeats=5]

w1 PPO, w2 DPO, w3 reward model, w4 RLOO (TRL trainers) and sampler (plain `model.generate`), all on a
random-initialised 4-layer GPT-2 (vocab 256, width 128) in float32. Each trainer runs 1 + repeats steps through
its own `train()`; a callback stamps every step end, the first step is the warm-up, `seconds` is the median of
the rest. Everything but the JSON line goes to stderr. Run benchmarks/peers/setup.sh first.
"""

import os

# Before any HF import: nothing from the hub, no progress bars, no experimental-API banner.
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                  TRANSFORMERS_VERBOSITY="error", HF_DATASETS_DISABLE_PROGRESS_BARS="1",
                  TRL_EXPERIMENTAL_SILENCE="1", TOKENIZERS_PARALLELISM="false", WANDB_DISABLED="true")

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import contextlib
import copy
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
import warnings

import datasets
import numpy as np
import tokenizers
import torch
import transformers
from transformers import (GenerationConfig, GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel,
                          PreTrainedTokenizerFast, TrainerCallback)
from transformers.trainer_callback import PrinterCallback
import trl

VOCAB, PROMPT, RESPONSE, BATCH, K = 256, 16, 32, 64, 4
LR = 1e-5
# TRL defaults to bf16 and gradient checkpointing; our workloads run fp32 and recompute nothing.
COMMON = dict(report_to=[], save_strategy="no", eval_strategy="no", disable_tqdm=True, bf16=False, fp16=False,
              gradient_checkpointing=False, learning_rate=LR, seed=0, per_device_train_batch_size=BATCH,
              gradient_accumulation_steps=1, dataloader_num_workers=0, use_cpu=True)


def quiet():
  """HF logging, warnings and progress bars off: only the JSON line may reach stdout."""
  warnings.filterwarnings("ignore")
  logging.disable(logging.WARNING)
  transformers.utils.logging.set_verbosity_error()
  transformers.utils.logging.disable_progress_bar()
  datasets.disable_progress_bars()


def cpu_busy(window_s: float = 0.5) -> float:
  """Fraction of all cores busy over the next window_s seconds (from /proc/stat; 0.0 where it does not exist)."""
  def sample():
    with open("/proc/stat") as f:
      fields = [float(x) for x in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait, total
  try:
    idle0, total0 = sample()
    time.sleep(window_s)
    idle1, total1 = sample()
  except OSError:
    return 0.0
  return 1.0 - (idle1 - idle0) / max(total1 - total0, 1.0)


def warn_if_busy():
  """Two cores: another busy process makes every torch op wait on a descheduled OpenMP thread (~10x slower)."""
  busy = cpu_busy()
  if busy > 0.2:
    print(f"trl_bench: CPU {busy:.0%} busy before start (another process?): timings will be inflated",
          file=sys.stderr)


def char(i: int) -> str:
  return chr(0x100 + i)  # one letter per token id: round-trips through text without merging or whitespace


def make_tokenizer() -> PreTrainedTokenizerFast:
  """A 256-token 'byte' vocabulary (one character each) plus <pad> = 256 and <eos> = 257.

  Pad and EOS lie outside the model's 256 logits, so sampling never yields them: every response has exactly
  32 tokens and no sampled token is mistaken for padding. All sequences are of one length, so no pad is fed in.
  """
  backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab={char(i): i for i in range(VOCAB)}, merges=[]))
  backend.decoder = tokenizers.decoders.Fuse()  # decode to the bare characters, no spaces between
  backend.add_special_tokens(["<pad>", "<eos>"])
  return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")


def gpt2_config(pad_token_id: int) -> GPT2Config:
  return GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=128, n_layer=4, n_head=4, n_inner=512,
                    resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, num_labels=1, pad_token_id=pad_token_id)


def make_models(tok, kinds):
  """Policy ('lm') and/or scalar heads ('score'), seed 0, float32, saved locally so TRL can reload by path."""
  torch.manual_seed(0)
  models = []
  for kind in kinds:
    cls = GPT2LMHeadModel if kind == "lm" else GPT2ForSequenceClassification
    model = cls(gpt2_config(tok.pad_token_id)).float()
    path = tempfile.mkdtemp(prefix=f"{kind}_")
    model.save_pretrained(path)  # RLOO builds its reference by reloading the policy's path
    models.append(cls.from_pretrained(path))
  return models


def random_ids(rng, rows: int, length: int) -> list[list[int]]:
  return rng.integers(1, VOCAB, size=(rows, length)).tolist()


class StepClock(TrainerCallback):
  """Wall-clock stamps at train begin and at every step end: step i lasts marks[i+1] - marks[i]."""

  def __init__(self):
    self.marks = []

  def on_train_begin(self, args, state, control, **kwargs):
    self.marks.append(time.perf_counter())

  def on_step_end(self, args, state, control, **kwargs):
    self.marks.append(time.perf_counter())

  def durations(self) -> list[float]:
    return [float(d) for d in np.diff(self.marks)]


def run_trainer(trainer, clock: StepClock) -> list[float]:
  trainer.remove_callback(PrinterCallback)  # it prints every log dict
  trainer.train()
  return clock.durations()


def w1_ppo(steps: int, tok):
  """PPO: 64 prompts x 16 -> 32 tokens, policy + frozen reference + reward model + critic, 4 epochs x 1 minibatch."""
  from trl.experimental.ppo import PPOConfig, PPOTrainer, ppo_trainer  # pylint: disable=g-import-not-at-top
  policy, reward, value = make_models(tok, ["lm", "score", "score"])
  gen_times = []
  original = ppo_trainer.batch_generation

  def timed_generation(*args, **kwargs):  # the module function PPOTrainer.train calls for its rollouts
    start = time.perf_counter()
    out = original(*args, **kwargs)
    gen_times.append(time.perf_counter() - start)
    assert out[0].shape[1] == PROMPT + RESPONSE, out[0].shape
    return out

  ppo_trainer.batch_generation = timed_generation
  prompts = datasets.Dataset.from_dict({"input_ids": random_ids(np.random.default_rng(0), BATCH * steps, PROMPT)})
  args = PPOConfig(output_dir=tempfile.mkdtemp(), total_episodes=BATCH * steps, num_ppo_epochs=4, num_mini_batches=1,
                   local_rollout_forward_batch_size=BATCH, response_length=RESPONSE, temperature=0.7,
                   stop_token=None, stop_token_id=None, kl_coef=0.05, num_sample_generations=0, **COMMON)
  clock = StepClock()  # eval_dataset: PPOTrainer builds an eval loader even with eval off; it is never run
  trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=copy.deepcopy(policy),
                       reward_model=reward, value_model=value, train_dataset=prompts, eval_dataset=prompts,
                       callbacks=[clock])
  durations = run_trainer(trainer, clock)
  share = sum(gen_times[1:]) / sum(durations[1:])
  notes = ["TRL 1.12 (newest release with PPOTrainer, in trl.experimental.ppo)",
           "no min_new_tokens knob: 32 tokens always, as stop_token_id=None and the pad/EOS ids (256/257) lie "
           "outside the 256-token model vocabulary (pad 256, not 0)",
           "old log-probs come from the generation scores (output_scores=True), as TRL does"]
  return durations, {"generation_share": share}, notes


class PreTokenizedDPOTrainer(trl.DPOTrainer):
  """DPOTrainer that takes prompt_ids / chosen_ids / rejected_ids as given (its own prep would append an EOS)."""

  def _prepare_dataset(self, dataset, *args, **kwargs):  # pylint: disable=unused-argument
    return dataset


def w2_dpo(steps: int, tok):
  """DPO: 64 pairs of 16-token prompt + 32-token chosen / rejected; reference forward every step; sigmoid loss."""
  policy, = make_models(tok, ["lm"])
  rng = np.random.default_rng(0)
  rows = BATCH * steps
  pairs = datasets.Dataset.from_dict({"prompt_ids": random_ids(rng, rows, PROMPT),
                                      "chosen_ids": random_ids(rng, rows, RESPONSE),
                                      "rejected_ids": random_ids(rng, rows, RESPONSE)})
  args = trl.DPOConfig(output_dir=tempfile.mkdtemp(), max_steps=steps, beta=0.1, loss_type=["sigmoid"],
                       precompute_ref_log_probs=False, max_length=None, **COMMON)
  clock = StepClock()
  trainer = PreTokenizedDPOTrainer(model=policy, ref_model=copy.deepcopy(policy), args=args, train_dataset=pairs,
                                   processing_class=tok, callbacks=[clock])
  notes = ["DPOTrainer._prepare_dataset skipped (data is pre-tokenized), so TRL appends no EOS: sequences stay 48",
           "TRL also computes per-step entropy / reward metrics (timed, as part of its step)"]
  return run_trainer(trainer, clock), {}, notes


def w3_reward(steps: int, tok):
  """Reward model: Bradley-Terry on 64 pairs of 48-token chosen / rejected sequences."""
  model, = make_models(tok, ["score"])
  rng = np.random.default_rng(0)
  rows = BATCH * steps
  pairs = datasets.Dataset.from_dict({"chosen_ids": random_ids(rng, rows, PROMPT + RESPONSE),
                                      "rejected_ids": random_ids(rng, rows, PROMPT + RESPONSE)})
  args = trl.RewardConfig(output_dir=tempfile.mkdtemp(), max_steps=steps, max_length=None, **COMMON)
  clock = StepClock()
  trainer = trl.RewardTrainer(model=model, args=args, train_dataset=pairs, processing_class=tok, callbacks=[clock])
  return run_trainer(trainer, clock), {}, []


def w4_rloo(steps: int, tok):
  """RLOO: 16 prompts x k=4 = 64 completions of exactly 32 tokens, one update per batch, KL to a frozen reference."""
  policy, reward = make_models(tok, ["lm", "score"])
  ids = random_ids(np.random.default_rng(0), (BATCH // K) * steps, PROMPT)
  prompts = datasets.Dataset.from_dict({"prompt": ["".join(map(char, row)) for row in ids]})
  args = trl.RLOOConfig(output_dir=tempfile.mkdtemp(), max_steps=steps, num_generations=K,
                        max_completion_length=RESPONSE, generation_kwargs={"min_new_tokens": RESPONSE},
                        temperature=0.7, top_k=0, beta=0.05, num_iterations=1, log_completions=False, **COMMON)
  clock = StepClock()
  trainer = trl.RLOOTrainer(model=policy, reward_funcs=reward, args=args, train_dataset=prompts,
                            processing_class=tok, reward_processing_classes=tok, callbacks=[clock])
  notes = ["TRL's RLOOTrainer takes text prompts: ids pass through a 1-character-per-token tokenizer and the "
           "reward model re-tokenizes the decoded prompt+completion (48 tokens)",
           "TRL runs an extra no-grad policy forward for the pre-update log-probs (KL penalty, clipped ratio)",
           "KL is TRL's sequence-level k1 penalty in the reward",
           "pad/EOS ids (256/257) lie outside the model vocabulary: no early stop, no sampled pad",
           "reference reloaded from the saved initial policy (TRL builds it from the policy's path)"]
  return run_trainer(trainer, clock), {}, notes


def sampler(steps: int, tok):
  """Plain `generate`: 64 prompts x 16 tokens -> exactly 32 sampled tokens, KV cache, temperature 0.7, no top-k."""
  policy, = make_models(tok, ["lm"])
  policy.eval()
  prompts = torch.tensor(random_ids(np.random.default_rng(0), BATCH, PROMPT))
  config = GenerationConfig(do_sample=True, temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=RESPONSE,
                            min_new_tokens=RESPONSE, use_cache=True, pad_token_id=tok.pad_token_id,
                            eos_token_id=tok.eos_token_id)
  durations = []
  with torch.inference_mode():
    for _ in range(steps):
      start = time.perf_counter()
      out = policy.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), generation_config=config)
      durations.append(time.perf_counter() - start)
      assert out.shape == (BATCH, PROMPT + RESPONSE), out.shape
  median = statistics.median(durations[1:])
  return durations, {"tokens_per_s": BATCH * RESPONSE / median}, []


WORKLOADS = {"w1": w1_ppo, "w2": w2_dpo, "w3": w3_reward, "w4": w4_rloo, "sampler": sampler}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
  parser.add_argument("--repeats", type=int, default=5, help="Timed steps after the warm-up one.")
  flags = parser.parse_args()
  quiet()
  warn_if_busy()
  torch.manual_seed(0)
  tempfile.tempdir = tempfile.mkdtemp(prefix="trl_bench_")  # saved models and trainer output_dirs, removed below
  try:
    with contextlib.redirect_stdout(sys.stderr):  # trainers print banners and log dicts
      durations, extra, notes = WORKLOADS[flags.workload](1 + flags.repeats, make_tokenizer())
  finally:
    shutil.rmtree(tempfile.tempdir, ignore_errors=True)
  assert len(durations) == 1 + flags.repeats, durations
  result = {"workload": flags.workload, "seconds": statistics.median(durations[1:]),
            "compile_or_warmup_s": durations[0], **extra, "repeats": flags.repeats, "trl": trl.__version__,
            "transformers": transformers.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "notes": "; ".join(notes)}
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
