"""Constitutional AI's supervised phase (Bai et al. 2022): a model's responses to the prompts,
critiqued and revised by principles drawn from a constitution; the final revisions are SFT
records (rlhf_jax/training/policy/revise.py, docs/ai_feedback.md).

  python -m rlhf_jax.main --config=configs/revise.py:tiny --workdir=runs/revise
  python -m rlhf_jax.main --config=configs/sft.py:tiny --workdir=runs/sl_cai \
    --config.data.source=revise:runs/revise --config.data.prompt_template='Human: {prompt}\n\nAssistant:'

With `init_from` empty, the upstream SFT stage (and its pretraining) first runs, or is reused
when finished, under WORKDIR/upstream/, and its policy is the model revised. Prompts come from
`data.source` as every stage's do (records' `data.prompt_field`, or the openings of documents).
"""

import ml_collections

from configs import common
from configs import sft

# The paper's dialogue format, a turn at a time; each sampled text follows its turn's colon.
HUMAN = "Human: {prompt}\n\nAssistant:"
CRITIQUE = "\n\nCritiqueRequest: {critique_request}\n\nCritique:"
REVISION = "\n\nRevisionRequest: {revision_request}\n\nRevision:"


def get_config(preset: str = "tiny"):
  c = common.base_config("revise", preset)
  small = common.is_small(preset)
  c.data.batch_size = 64  # prompts per chunk: each step of the chain is one sampling call over them
  c.revise = ml_collections.ConfigDict(dict(
      # "embedded" (rlhf_jax/data/constitution.jsonl) or a .json / .jsonl file of principles, each
      # {"critique": ..., "revision": ...} (and "choice": the RL phase's judge question).
      constitution="embedded",
      # Drawn for each prompt from (seed, its index), distinct; each a critique and a revision.
      principles_per_prompt=2,
      num_prompts=256 if small else 4096,  # the first this many of data.source's training prompts
      response_tokens=32 if small else 256, critique_tokens=32 if small else 256,
      revision_tokens=32 if small else 256, temperature=1.0,
      # tokens of a turn's context, cut from the left; plus a turn's tokens, at most the model's max_len
      max_context_len=96 if small else 768,
      # Before every context: few-shot examples of the format, as the paper prompts its model.
      prefix="",
      human_template=HUMAN, critique_template=CRITIQUE, revision_template=REVISION,
      # A sampled text ends before the first of these (the model writing the next turn itself).
      stop=("Human:", "Assistant:", "CritiqueRequest:", "Critique:", "RevisionRequest:", "Revision:")))
  c.upstream = {"sft": sft.get_config(preset)}
  return c
