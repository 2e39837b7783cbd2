"""What the arithmetic pipeline's stages read, against digests recorded at 261dcc4 (the commit
whose showcase results are committed) and still equal at 9ee443e (issue 46).

The showcase's RL gain depends on the SFT policy it starts from, so anything that silently
changes the pretraining or SFT batches, the tokenizer, the prompt template or the records RL
scores against would move every committed figure. A change meant to do so updates these
digests, and the commit says so (and re-measures, or marks the figures it moves).
"""

import hashlib
import json

import numpy as np

from configs import pipeline
from rlhf_jax.data import prompts as prompt_lib
from rlhf_jax.data.tokenizers import build_tokenizer
from rlhf_jax.training.lm import lm_trainer

EXPECTED = {"pretrain": "0f7d8a7a3431a103", "sft": "e08907b2a8c52540", "rl_train": "1a931c06d07eb6d3",
            "rl_eval": "7fe45262d76e508f"}


def digest(*parts) -> str:
  h = hashlib.sha256()
  for x in parts:
    h.update(np.ascontiguousarray(x).tobytes() if isinstance(x, np.ndarray) else json.dumps(x).encode())
  return h.hexdigest()[:16]


def test_the_arithmetic_pipelines_batches_tokens_and_records_are_what_its_results_were_measured_on():
  config = pipeline.get_config("arithmetic")
  tokenizer = build_tokenizer(config.sft.tokenizer.kind)
  found = {}
  for stage in ("pretrain", "sft"):
    stage_config = config[stage]
    stage_config.stage = stage
    data = lm_trainer.prepare_data(stage_config, tokenizer)
    batches = [data.train.batch(step) for step in (0, 1, 599)]
    found[stage] = digest(*[batch[key] for batch in batches for key in sorted(batch)])
  config.rl.stage = "rl"
  for split in ("train", "eval"):
    prompts = prompt_lib.prompt_set(config.rl, tokenizer, split)
    found[f"rl_{split}"] = digest(prompts.tokens, prompts.mask, prompts.texts, dict(prompts.columns))
  assert found == EXPECTED
