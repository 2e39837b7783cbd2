"""RL algorithms as named presets of the registries' parts: the one place that declares them.

An algorithm is an advantage estimator (`advantages.ADVANTAGES`), a policy loss
(`policy_losses.POLICY_LOSSES`), a loss aggregation (`aggregation.LOSS_AGGREGATIONS`) and the
RL fields it takes when a config leaves them unset (None, or the earlier 0 / ""). What it needs
(a critic, a greedy sample, k >= 2) follows from its estimator. Every part is also its own
switch (`rl.advantage`, `rl.policy_loss`, `rl.loss_aggregation`, `rl.clip_eps`, ...), so
`algo=grpo` with `rl.loss_aggregation=constant rl.scale_by_std=False` is Dr. GRPO by hand.
A new method is one function in a registry and one line here.
"""

import dataclasses

from rlhf_jax.algorithms.advantages import ADVANTAGES
from rlhf_jax.algorithms.aggregation import ALIASES

ON_POLICY = dict(epochs=1, minibatches=1)  # one update per batch, as REINFORCE-style methods are published
GROUPS = dict(samples_per_prompt=4)


@dataclasses.dataclass(frozen=True)
class Algorithm:
  advantage: str
  policy_loss: str
  loss_aggregation: str
  defaults: dict  # rl.* fields
  paper: str


ALGORITHMS = {
    "ppo": Algorithm("gae", "clip", "token_mean", dict(samples_per_prompt=1, epochs=4, minibatches=2),
                     "Schulman et al. 2017; Huang et al. 2024"),
    "reinforce": Algorithm("reinforce", "clip", "seq_mean_token_sum", dict(samples_per_prompt=1, **ON_POLICY),
                           "Williams 1992"),
    "rloo": Algorithm("rloo", "clip", "seq_mean_token_sum", dict(**GROUPS, **ON_POLICY), "Ahmadian et al. 2024"),
    "grpo": Algorithm("grpo", "clip", "seq_mean_token_mean", dict(**GROUPS, **ON_POLICY), "Shao et al. 2024"),
    "remax": Algorithm("remax", "clip", "seq_mean_token_sum", dict(samples_per_prompt=1, **ON_POLICY),
                       "Li et al. 2023"),
    "dr_grpo": Algorithm("grpo", "clip", "constant", dict(**GROUPS, **ON_POLICY, scale_by_std=False),
                         "Liu et al. 2025"),
    "dapo": Algorithm("grpo", "clip", "token_mean",
                      dict(**GROUPS, **ON_POLICY, clip_eps=0.2, clip_eps_high=0.28, dynamic_sampling=True,
                           overlong_buffer=0.2), "Yu et al. 2025"),  # the paper: 4096 of 20480 tokens
    # Several updates per batch, where their sequence-level and weight clips act.
    "gspo": Algorithm("grpo", "gspo", "seq_mean_token_mean",
                      dict(**GROUPS, epochs=1, minibatches=4, clip_eps=3e-4, clip_eps_high=4e-4),
                      "Zheng et al. 2025"),
    "cispo": Algorithm("grpo", "cispo", "token_mean",
                       dict(**GROUPS, epochs=1, minibatches=4, clip_eps=1.0, clip_eps_high=0.28),
                       "MiniMax 2025"),
    "reinforce_pp": Algorithm("reinforce_pp", "clip", "token_mean", dict(samples_per_prompt=1, **ON_POLICY),
                              "Hu 2025"),
}
# What a field takes when neither the config nor the algorithm sets it.
FALLBACKS = dict(clip_eps=0.2, clip_eps_high=None, scale_by_std=True, dynamic_sampling=False, overlong_buffer=0.0)


def unset(value) -> bool:
  """None, or the earlier configs' 0 / "" (a bool False is a setting, not unset)."""
  return value is None or (not isinstance(value, bool) and value in (0, ""))


def resolve(algo: str, rl: dict) -> dict:
  """The RL fields of `algo` with its parts and defaults filled in where `rl` leaves them unset.
  `rl.loss_reduction`, the earlier name of `rl.loss_aggregation`, and its values still work."""
  preset = ALGORITHMS[algo]
  fields = dict(rl)
  legacy = fields.pop("loss_reduction", "")
  if unset(fields.get("loss_aggregation")) and legacy:
    fields["loss_aggregation"] = ALIASES.get(legacy, legacy)
  parts = dict(advantage=preset.advantage, policy_loss=preset.policy_loss,
               loss_aggregation=preset.loss_aggregation)
  for key, value in {**FALLBACKS, **parts, **preset.defaults}.items():
    if unset(fields.get(key)):
      fields[key] = value
  if fields["clip_eps_high"] is None:  # a symmetric range unless told otherwise
    fields["clip_eps_high"] = fields["clip_eps"]
  return fields


def needs_critic(advantage: str) -> bool:
  return ADVANTAGES[advantage].needs_critic
