"""RL algorithms as named presets of the registries' parts: the one place that declares them.

An algorithm is an advantage estimator (`advantages.ADVANTAGES`), a policy loss
(`policy_losses.POLICY_LOSSES`), a loss aggregation (`aggregation.LOSS_AGGREGATIONS`) and the
RL fields it takes when a config leaves them unset (None: 0, False and "" are settings). What it needs
(a critic, a greedy sample, k >= 2) follows from its estimator. Every part is also its own
switch (`rl.advantage`, `rl.policy_loss`, `rl.loss_aggregation`, `rl.clip_eps`, ...), so
`algo=grpo` with `rl.loss_aggregation=constant rl.scale_by_std=False` is Dr. GRPO by hand.
A new method is one function in a registry and one line here.
"""

import dataclasses

from rlhf_jax import registry
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
  kl_coef: float | None = None  # the KL penalty's beta where the config leaves `kl_coef` unset (None: KL_COEF)


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
                           overlong_buffer=0.2),  # the paper: 4096 of 20480 tokens
                      "Yu et al. 2025", kl_coef=0.0),  # the paper drops the KL penalty
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


def register(name: str, algorithm: Algorithm) -> None:
  """Adds an algorithm (`algo=NAME`): registered parts and the rl.* fields it sets."""
  registry.add(ALGORITHMS, "algorithm", name, algorithm)


# What a field takes when neither the config nor the algorithm sets it.
FALLBACKS = dict(clip_eps=0.2, clip_eps_high=None, scale_by_std=True, dynamic_sampling=False, overlong_buffer=0.0)
KL_COEF = 0.2  # `kl_coef` unset and the algorithm silent: Huang et al.'s tiny-model setting (configs/rl.py)
PRESET_FIELDS = ("advantage", "policy_loss", "loss_aggregation", *FALLBACKS,
                 *sorted({key for a in ALGORITHMS.values() for key in a.defaults} - set(FALLBACKS)))


def resolve_fields(algo: str, rl: dict) -> tuple[dict, dict]:
  """(fields, origins): the RL fields of `algo`, each field the config leaves None taken from
  the algorithm ("preset") or FALLBACKS ("default"); origins[field] says which, or "config".
  `rl.loss_reduction`, the earlier name of `rl.loss_aggregation`, and its values still work."""
  preset = ALGORITHMS[algo]
  fields = dict(rl)
  legacy = fields.pop("loss_reduction", None)
  if fields.get("loss_aggregation") is None and legacy:
    fields["loss_aggregation"] = ALIASES.get(legacy, legacy)
  origins = {key: "config" for key, value in fields.items() if value is not None}
  parts = dict(advantage=preset.advantage, policy_loss=preset.policy_loss,
               loss_aggregation=preset.loss_aggregation)
  for origin, values in (("preset", {**parts, **preset.defaults}), ("default", FALLBACKS)):
    for key, value in values.items():
      if fields.get(key) is None:
        fields[key], origins[key] = value, origin
  if fields["clip_eps_high"] is None:  # a symmetric range unless told otherwise
    fields["clip_eps_high"], origins["clip_eps_high"] = fields["clip_eps"], "clip_eps"
  return fields, origins


def resolve(algo: str, rl: dict) -> dict:
  return resolve_fields(algo, rl)[0]


def kl_coef(algo: str, configured: float | None) -> tuple[float, str]:
  """(beta, origin): the config's `kl_coef`, else the algorithm's, else KL_COEF."""
  if configured is not None:
    return float(configured), "config"
  preset = ALGORITHMS[algo].kl_coef
  return (preset, "preset") if preset is not None else (KL_COEF, "default")


def needs_critic(advantage: str) -> bool:
  return ADVANTAGES[advantage].needs_critic
