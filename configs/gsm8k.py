"""GRPO (or any RL method) on GSM8K from a Hugging Face checkpoint, rewarded by the `gsm8k`
checker alone: no reward model. Fetch both yourself first (nothing is downloaded at run time):

  huggingface-cli download Qwen/Qwen2.5-0.5B-Instruct --local-dir models/qwen2.5-0.5b-instruct
  huggingface-cli download openai/gsm8k --repo-type dataset --local-dir data/gsm8k
  python -m rlhf_jax.main --config=configs/gsm8k.py --workdir=runs/gsm8k_grpo \\
    --config.init_from=hf:models/qwen2.5-0.5b-instruct

Prompts are the `question` column in the checkpoint's chat template; the `answer` column (its
worked solution ending in "#### N") reaches the checker. `--config.algo=ppo` (a critic from the
policy), `rloo`, `reinforce_pp`, ... compare methods on the same rollouts. The preset (default
`llama_1b`) sizes batches and lengths for an accelerator; the architecture is the checkpoint's.
"""

from configs import rl

TRAIN = "hf:data/gsm8k/main/train-00000-of-00001.parquet"
TEST = "hf:data/gsm8k/main/test-00000-of-00001.parquet"


def get_config(preset: str = "llama_1b"):
  c = rl.get_config(preset)
  c.algo, c.judge = "grpo", ""  # the checker is the only reward, and accuracy is the measure
  c.reward.fns = ("gsm8k",)
  del c.upstream  # init_from names the checkpoint: no upstream stage to run
  c.data.update(dict(source=TRAIN, eval_source=TEST, prompt_field="question", chat_template=True))
  c.max_prompt_len, c.eval_prompts = 256, 256
  c.sample.max_new_tokens = 512 if preset != "tiny" else c.sample.max_new_tokens
  c.eval.k = 4
  return c
