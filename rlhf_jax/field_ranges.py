"""The ranges of numeric config fields, checked for every stage before anything runs or is written.

Without them `rl.epochs=-1` or `data.batch_size=0` ended in a traceback after the run directory
was written, and `optim.lr=-1` trained uphill (issue 39). A field a stage's config lacks is not
checked; a value None (an RL field left to its algorithm's preset) is not either.
"""

import math

from rlhf_jax.errors import UserError

POSITIVE, AT_LEAST_1, NON_NEGATIVE, UNIT, OPEN_UNIT = "> 0", ">= 1", ">= 0", "in [0, 1]", "in (0, 1]"
_HOLDS = {
    POSITIVE: lambda v: v > 0,
    AT_LEAST_1: lambda v: v >= 1,
    NON_NEGATIVE: lambda v: v >= 0,
    UNIT: lambda v: 0 <= v <= 1,
    OPEN_UNIT: lambda v: 0 < v <= 1,
}

RANGES = {
    "seed": NON_NEGATIVE,
    "optim.lr": POSITIVE, "optim.warmup_steps": NON_NEGATIVE, "optim.final_lr_ratio": NON_NEGATIVE,
    "optim.b1": UNIT, "optim.b2": UNIT, "optim.eps": POSITIVE, "optim.weight_decay": NON_NEGATIVE,
    "optim.grad_clip": POSITIVE, "optim.accum_steps": AT_LEAST_1,
    "value_optim.lr": POSITIVE,
    "train.num_steps": AT_LEAST_1, "train.log_every": AT_LEAST_1, "train.eval_every": AT_LEAST_1,
    "train.checkpoint_every": AT_LEAST_1, "train.keep_checkpoints": AT_LEAST_1, "train.eval_batches": AT_LEAST_1,
    "data.batch_size": AT_LEAST_1, "data.seq_len": AT_LEAST_1, "data.eval_fraction": UNIT, "data.truncate_tokens": NON_NEGATIVE,
    "sample.num_prompts": AT_LEAST_1, "sample.max_new_tokens": AT_LEAST_1, "sample.temperature": NON_NEGATIVE,
    "sample.top_k": NON_NEGATIVE, "sample.top_p": OPEN_UNIT,
    "sample.slots": NON_NEGATIVE, "sample.cache_blocks": NON_NEGATIVE, "sample.block_size": AT_LEAST_1,
    "eval_prompts": AT_LEAST_1, "max_prompt_len": AT_LEAST_1, "kl_coef": NON_NEGATIVE,
    # None takes the algorithm's (rl_plan.py); a value set is used as it is, so 0 is refused.
    "rl.samples_per_prompt": AT_LEAST_1, "rl.epochs": AT_LEAST_1, "rl.minibatches": AT_LEAST_1,
    "rl.accum_steps": AT_LEAST_1, "rl.pack_rows": NON_NEGATIVE, "rl.clip_eps": POSITIVE, "rl.clip_eps_high": POSITIVE,
    "rl.dual_clip": AT_LEAST_1, "rl.value_clip": POSITIVE, "rl.vf_coef": NON_NEGATIVE, "rl.ent_coef": NON_NEGATIVE,
    "rl.gamma": UNIT, "rl.lam": UNIT, "rl.baseline_decay": UNIT, "rl.overlong_buffer": UNIT,
    "rl.kl_target": POSITIVE, "rl.kl_horizon": POSITIVE,
    "revise.num_prompts": AT_LEAST_1, "revise.principles_per_prompt": AT_LEAST_1, "revise.response_tokens": AT_LEAST_1,
    "revise.critique_tokens": AT_LEAST_1, "revise.revision_tokens": AT_LEAST_1, "revise.max_context_len": AT_LEAST_1,
    "revise.temperature": NON_NEGATIVE,
}


# Counts an algorithm's preset fills when the config leaves them None; before None meant unset, 0 did.
PRESET_COUNTS = ("rl.samples_per_prompt", "rl.epochs", "rl.minibatches")


def check_ranges(config) -> None:
  """Raises UserError naming the first field of `config` outside its range."""
  for path, bound in RANGES.items():
    value = lookup(config, path)
    if value is None or isinstance(value, bool):
      continue
    if not isinstance(value, (int, float)) or math.isnan(value) or not _HOLDS[bound](value):
      hint = " (0 no longer means the algorithm's: leave it unset, None)" if path in PRESET_COUNTS and value == 0 else ""
      raise UserError(f"{path}={value!r} must be {bound}{hint}")


def lookup(config, path: str):
  """The value at a dotted `path`, or None where the config lacks it."""
  node = config
  for name in path.split("."):
    if not hasattr(node, "get") or name not in node:
      return None
    node = node[name]
  return node
