"""Algorithm presets: every part they name is registered, and a config's own settings win."""

from rlhf_jax.algorithms import presets
from rlhf_jax.algorithms.advantages import ADVANTAGES
from rlhf_jax.algorithms.aggregation import LOSS_AGGREGATIONS
from rlhf_jax.algorithms.policy_losses import POLICY_LOSSES
from rlhf_jax.training.rl.rl_steps import RLConfig


def test_every_algorithm_is_registered_parts_and_rl_config_fields():
  assert list(presets.ALGORITHMS) == ["ppo", "reinforce", "rloo", "grpo", "remax", "dr_grpo", "dapo", "gspo",
                                      "cispo", "reinforce_pp"]
  for name, algorithm in presets.ALGORITHMS.items():
    assert algorithm.advantage in ADVANTAGES and algorithm.policy_loss in POLICY_LOSSES, name
    assert algorithm.loss_aggregation in LOSS_AGGREGATIONS and algorithm.paper, name
    cfg = RLConfig(max_new_tokens=8, stop_ids=(1,), pad_id=0, algo=name, **presets.resolve(name, {}))
    assert cfg.has_critic == (name == "ppo") and cfg.needs_greedy == (name == "remax")
    assert cfg.samples_per_prompt >= ADVANTAGES[cfg.advantage].min_group_size


def test_the_papers_settings_and_what_a_config_sets_itself():
  dr_grpo, dapo, gspo = (presets.resolve(n, {}) for n in ("dr_grpo", "dapo", "gspo"))
  assert (dr_grpo["loss_aggregation"], dr_grpo["scale_by_std"]) == ("constant", False)
  assert (dapo["clip_eps"], dapo["clip_eps_high"], dapo["dynamic_sampling"]) == (0.2, 0.28, True)
  assert (gspo["policy_loss"], gspo["clip_eps"], gspo["clip_eps_high"]) == ("gspo", 3e-4, 4e-4)
  # Dr. GRPO by hand: GRPO with two of its parts switched.
  by_hand = presets.resolve("grpo", {"loss_aggregation": "constant", "scale_by_std": False})
  assert {k: by_hand[k] for k in dr_grpo} == dr_grpo
  # An explicit False, an explicit clip range and the earlier field name all win over the preset.
  assert presets.resolve("grpo", {"scale_by_std": False})["scale_by_std"] is False
  assert presets.resolve("ppo", {"clip_eps": 0.1})["clip_eps_high"] == 0.1  # symmetric unless told
  assert presets.resolve("grpo", {"loss_reduction": "sequence", "loss_aggregation": None})["loss_aggregation"] == \
      "seq_mean_token_sum"


ZERO = {bool: False, int: 0, float: 0.0, str: ""}


def test_a_zero_or_false_set_in_the_config_wins_over_every_preset():
  # None is "unset"; 0, 0.0, False and "" are settings (a config could not turn DAPO's overlong
  # penalty off when 0 meant unset). Checks reject the ones no run can use, naming the field.
  for name, algorithm in presets.ALGORITHMS.items():
    defaults = presets.resolve(name, {})
    for field in presets.PRESET_FIELDS:
      zero = ZERO[type(defaults[field]) if defaults[field] is not None else float]
      fields, origins = presets.resolve_fields(name, {field: zero})
      assert fields[field] == zero and type(fields[field]) is type(zero) and origins[field] == "config", (name, field)
      assert all(origins[other] in ("preset", "default", "clip_eps") for other in fields if other != field)
  assert presets.kl_coef("dapo", None) == (0.0, "preset") and presets.kl_coef("grpo", None) == (0.2, "default")
  assert presets.kl_coef("dapo", 0.05) == (0.05, "config") and presets.kl_coef("ppo", 0.0) == (0.0, "config")
