"""Best-of-n: sample n responses from the SFT policy, keep the reward model's favourite (Stiennon
et al. 2020; Gao et al. 2022), for every n in `ns`; judged by the gold judge like every method.

  python -m rlhf_jax.main --config=configs/best_of_n.py:tiny --workdir=runs/best_of_n

With `init_from`/`reward_from` empty, the upstream stages (pretrain -> SFT -> reward model)
first run, or are reused when finished, under WORKDIR/upstream/. No training: one pass draws
max(ns) responses per held-out prompt and scores them; each n's gold and proxy reward use all
of them (the unbiased estimator over n-subsets), its KL is log n - (n - 1) / n.
"""

from configs import common
from configs import reward


def get_config(preset: str = "tiny"):
  c = common.base_config("best_of_n", preset)
  c.algo = "best_of_n"  # names the method in sweep results
  c.reward_from = ""  # a finished reward run; "" = the upstream one
  c.judge = "vader"
  c.ns = (1, 2, 4, 8, 16, 32)
  c.eval_prompts = 64
  c.max_prompt_len = 16  # tokens, as the RL stage's
  c.sample.max_new_tokens = 80 if common.is_small(preset) else 256
  c.upstream = {"reward": reward.get_config(preset)}
  c.upstream_paths = {"init_from": "sft", "reward_from": "reward"}
  return c
