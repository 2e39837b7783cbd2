"""The RL stage's earlier name, `ppo`, still works wherever users typed it."""

from configs import pipeline, ppo, rl
from rlhf_jax import stage_names, stage_specs, stages


def test_old_stage_configs_and_their_upstream_run_as_the_rl_stage():
  config = rl.get_config("tiny")
  config.stage = "ppo"  # a config file written when the stage was `ppo`
  config.upstream.reward.stage = "reward"
  stage_names.normalise(config)
  assert config.stage == "rl" and config.stage in stage_specs.STAGES and config.upstream.reward.stage == "reward"
  stages.check_all(config)
  assert ppo.get_config("tiny").stage == "rl" and ppo.get_config("tiny").algo == "ppo"


def test_old_pipeline_sections_keep_their_names_and_old_stage_lists_find_the_rl_section():
  old = pipeline.get_config("tiny")
  with old.unlocked():
    old.ppo = old.rl  # an earlier pipeline config: its RL section is `ppo`, of stage `ppo`
    del old.rl
  old.ppo.stage, old.stages = "ppo", ("pretrain", "sft", "reward", "ppo")
  stage_names.normalise(old)
  assert old.stages == ("pretrain", "sft", "reward", "ppo") and old.ppo.stage == "rl"  # still WORKDIR/ppo
  new = pipeline.get_config("tiny")
  new.stages = ("pretrain", "sft", "reward", "ppo")  # the old stage list on today's config
  stage_names.normalise(new)
  assert new.stages == ("pretrain", "sft", "reward", "rl")
  stages.check_all(new)
