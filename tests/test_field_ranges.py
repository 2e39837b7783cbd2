"""Numeric fields out of range are one line before any stage runs (issue 39, item 6)."""

import pytest

from configs import pipeline, rl
from rlhf_jax import field_ranges, stages
from rlhf_jax.errors import UserError


@pytest.mark.parametrize("field, value, message", [
    ("optim.lr", -1.0, "optim.lr=-1.0 must be > 0"),
    ("train.num_steps", 0, "train.num_steps=0 must be >= 1"),
    ("sample.top_p", 1.5, "sample.top_p=1.5 must be in (0, 1]"),
    ("rl.gamma", float("nan"), "rl.gamma=nan must be in [0, 1]"),
    ("rl.clip_eps", 0.0, "rl.clip_eps=0.0 must be > 0"),
    ("kl_coef", -0.1, "kl_coef=-0.1 must be >= 0"),
    ("sample.slots", -4, "sample.slots=-4 must be >= 0"),
])
def test_a_field_out_of_range_is_one_line_before_any_stage_runs(field, value, message):
  config = rl.get_config("tiny")
  parent, _, name = field.rpartition(".")
  (field_ranges.lookup(config, parent) if parent else config)[name] = value
  with pytest.raises(UserError, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
    stages.check_all(config)


def test_every_preset_is_within_its_ranges_and_upstream_stages_are_checked_too():
  stages.check_all(pipeline.get_config("tiny"))
  stages.check_all(pipeline.get_config("arithmetic"))
  config = rl.get_config("tiny")
  config.upstream.reward.upstream.sft.optim.lr = 0.0  # the SFT stage it would run first
  with pytest.raises(UserError, match=r"optim.lr=0.0 must be > 0"):
    stages.check_all(config)


def test_a_batching_no_sampler_has_and_continuous_batching_with_turns_are_one_line():
  config = rl.get_config("tiny")
  config.sample.batching = "pages"
  with pytest.raises(UserError, match=r"^sample.batching='pages': choose one of \('static', 'continuous', 'paged'\)$"):
    stages.check_all(config)
  config.sample.batching, config.sample.paged_attention = "paged", "flash"
  with pytest.raises(UserError, match=r"^sample.paged_attention='flash': choose one of \('xla', 'pallas'\)$"):
    stages.check_all(config)
  config.sample.paged_attention, config.env.tools = "xla", ("calculator",)
  with pytest.raises(UserError, match="sample.batching=paged .* turn_cache.py"):
    stages.check_all(config)
