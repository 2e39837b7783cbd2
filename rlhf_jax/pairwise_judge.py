"""A judge model comparing two responses to one prompt: a local Hugging Face causal LM (hf:DIR)
or a finished run of ours (its directory: e.g. an SFT run on `judge_pairs:` records,
data/judge_records.py) asked which is better, each pair in both orders to cancel the judge's
position bias.

The judge reads `template` filled with the prompt and the two responses (A first, B second)
and its next-token distribution is read at the end: P(A) = softmax over the logits of the
first tokens of " A" and " B". The win rate of `ours` over `theirs` on a prompt is
(P(A | ours as A) + P(B | ours as B)) / 2: a judge that always prefers the first position
gives 0.5, and two identical responses give exactly 0.5. Used for the TL;DR win rate against
the reference summaries (`eval.judge_model`); the judge runs on the host's first device.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.errors import UserError
from rlhf_jax.workdir import RunDir

# The DPO paper's TL;DR judge prompt (Rafailov et al. 2023, appendix), asking for the letter alone.
TLDR_TEMPLATE = ("Which of the following summaries does a better job of summarizing the most important points in "
                 "the given forum post, without including unimportant or irrelevant details? A good summary is both "
                 "precise and concise.\n\nPost:\n{prompt}\n\nSummary A:\n{a}\n\nSummary B:\n{b}\n\n"
                 "Which summary is better, A or B? Answer:")
# RLAIF's labelling prompt (Lee et al. 2023's shape: the context, two responses, the preferred one's letter).
PREFERENCE_TEMPLATE = ("{prompt}\n\nResponse A: {a}\n\nResponse B: {b}\n\n"
                       "Which response is better, A or B? Answer:")
# Constitutional AI's RL phase (Bai et al. 2022, section 4.1): a principle's `choice` question
# between the two responses, the answer a letter (data/constitution.py; reward stage,
# preference.constitution).
CONSTITUTION_TEMPLATE = ("Consider the following conversation between a human and an assistant:\n\n{prompt}\n\n"
                         "{principle}\n\nOptions:\n(A) {a}\n(B) {b}\n\nWhich option, A or B? Answer:")
BUCKET = 64  # judge inputs are padded to a multiple of this many tokens: few compilations


def is_model(source: str) -> bool:
  """Whether a judge setting names a judge model (hf:DIR or a run's directory, a path) rather
  than a gold judge by name (judges.py's names hold no path separator)."""
  return source.startswith("hf:") or os.sep in source or os.path.isdir(source)


def check_source(source: str, setting: str, pending: bool = False) -> str:
  """The directory of `source`: hf:DIR, or a finished run's directory. With `pending`, a run
  directory not there yet passes (an earlier stage of the pipeline or sweep writes it; it is
  checked again when the judge is loaded)."""
  path, run = source.removeprefix("hf:"), not source.startswith("hf:")
  expected = f"{setting}={source!r}: expected hf:DIR, a local Hugging Face causal LM, or a finished run's directory"
  if not os.path.isdir(path) and not (pending and run and not os.path.exists(path)):
    raise UserError(expected)
  if run and os.path.isdir(path) and not RunDir(path).finished:
    raise UserError(f"{expected} (no summary.json there)")
  return path


def both_orders(judge, prompts, a_texts, b_texts, principles=None) -> tuple:
  """(P(a preferred) [n], whether the two orders agree [n]): the judge asked with a first, then
  with b first, the two answers averaged (a judge that always picks one position gives 0.5).
  `principles`: each pair's {principle} in the template (a constitution's question)."""
  asked = {} if principles is None else {"principles": principles}
  a_first = judge.first_preferred(prompts, a_texts, b_texts, **asked)
  b_first = judge.first_preferred(prompts, b_texts, a_texts, **asked)
  return ((a_first + 1.0 - b_first) / 2).astype(np.float32), (a_first >= 0.5) == (b_first < 0.5)


class PairwiseJudge:
  """`win_rate(prompts, ours, theirs)` per prompt, by the causal LM in `source` (hf:DIR)."""

  def __init__(self, source: str, template: str = TLDR_TEMPLATE, batch: int = 8, setting: str = "eval.judge_model"):
    if "{a}" not in template or "{b}" not in template:
      raise UserError(f"{setting.rsplit('.', 1)[0]}.judge_template must hold {{a}} and {{b}} (and may hold {{prompt}})")
    self.model, self.params, self.tokenizer, self.prefix = load_model(source, setting)
    self.template, self.batch = template, batch
    self.choices = [self.tokenizer.encode(f" {letter}")[0] for letter in "AB"]
    self.forward = jax.jit(lambda params, tokens, mask: self.model.apply({"params": params}, tokens, mask)[:, -1])

  def first_preferred(self, prompts, firsts, seconds, principles=None) -> np.ndarray:
    """P(the judge prefers the first response) per pair (`principles`: each pair's {principle})."""
    principles = principles or [""] * len(prompts)
    texts = [self.template.format(prompt=p, a=a, b=b, principle=q) for p, a, b, q in
             zip(prompts, firsts, seconds, principles)]
    out = []
    for start in range(0, len(texts), self.batch):
      tokens, mask = self._left_padded(texts[start:start + self.batch])
      logits = self.forward(self.params, tokens, mask)[:, jnp.asarray(self.choices)]
      out.append(np.asarray(jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[:, 0]))
    return np.concatenate(out)[:len(texts)]

  def win_rate(self, prompts, ours, theirs) -> np.ndarray:
    """Per prompt, how often the judge prefers `ours`, averaged over both orders."""
    return both_orders(self, prompts, ours, theirs)[0]

  def _left_padded(self, texts) -> tuple:
    """A batch of `self.batch` rows (empty rows pad a short last batch), each text's ids cut from
    the left to the judge's length and left-padded to a multiple of BUCKET."""
    limit = self.model.cfg.max_len
    ids = [(self.prefix + self.tokenizer.encode(t))[-limit:] for t in texts]
    ids += [[self.tokenizer.pad_id]] * (self.batch - len(texts))
    width = min(limit, -(-max(map(len, ids)) // BUCKET) * BUCKET)
    tokens = np.full((len(ids), width), self.tokenizer.pad_id, np.int32)
    mask = np.zeros((len(ids), width), np.int32)
    for row, seq in enumerate(ids):
      tokens[row, width - len(seq):], mask[row, width - len(seq):] = seq, 1
    return jnp.asarray(tokens), jnp.asarray(mask)


def load_model(source: str, setting: str) -> tuple:
  """(model, params, tokenizer, the ids every input starts with) of hf:DIR or of a finished run:
  our runs train on BOS + prompt (data/batches.py), so a run's judge reads BOS first too."""
  path = check_source(source, setting)
  if source.startswith("hf:"):
    from rlhf_jax.interop import hf  # pylint: disable=g-import-not-at-top  (transformers-free, but heavy)
    return (*hf.load(path), hf.load_tokenizer(path), [])
  from rlhf_jax import training  # pylint: disable=g-import-not-at-top  (the judge's module stays light)
  from rlhf_jax.data.tokenizers import load_tokenizer  # pylint: disable=g-import-not-at-top
  from rlhf_jax.interop.export import EXPORTED, restore_params, run_stage  # pylint: disable=g-import-not-at-top
  from rlhf_jax.interop.hf import CausalLM  # pylint: disable=g-import-not-at-top  (our model, logits alone)
  from rlhf_jax.stage_specs import STAGES  # pylint: disable=g-import-not-at-top
  run = RunDir(path)
  stage = run_stage(run)
  if stage not in EXPORTED or stage == "reward":
    raise UserError(f"{setting}={source!r}: a {stage} run; a judge is a language model's run (pretrain, sft, rl, dpo)")
  model = CausalLM(dataclasses.replace(training.frozen_model_config(run), heads=()))
  tokenizer = load_tokenizer(run.file("tokenizer"))
  return model, restore_params(run, STAGES[stage].export_item), tokenizer, [tokenizer.bos_id]


def from_config(eval_cfg, columns: dict):
  """(prompts, responses, the reference policy's responses) -> win rates, from `eval.judge_model`
  and `eval.judge_template`: against the prompts' `eval.judge_reference_field` column, or with
  that field "" against the reference policy's responses. None without a judge model."""
  if not eval_cfg or not eval_cfg.get("judge_model"):
    return None
  field = eval_cfg.get("judge_reference_field", "label")
  if field and field not in columns:
    raise UserError(f"eval.judge_reference_field={field!r}: the held-out prompts have no such column "
                    f"(they have {sorted(columns)}; \"\" compares with the reference policy's responses)")
  judge = PairwiseJudge(eval_cfg.judge_model, eval_cfg.get("judge_template") or TLDR_TEMPLATE)
  return lambda prompts, responses, ref_responses: judge.win_rate(
      prompts, responses, list(columns[field]) if field else ref_responses)
