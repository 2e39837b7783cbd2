"""Every config file and preset loads, and the presets have the sizes they claim."""

import pytest

from configs import common, dpo, pipeline, ppo, pretrain, revise, reward, rl, sft
from rlhf_jax import stage_specs, stages
from rlhf_jax.models.config import ModelConfig

PRESETS = tuple(common.MODELS)


@pytest.mark.parametrize("module", [pretrain, sft, reward, rl, ppo, dpo, revise, pipeline])
@pytest.mark.parametrize("preset", PRESETS)
def test_configs_load_and_pass_the_stage_checks(module, preset):
  config = module.get_config(preset)
  assert config.stage in ("pipeline", *stage_specs.STAGES)
  stages.check_all(config)  # every algo/critic/batch field of every stage it would run


def model(preset, vocab=1024):
  values = dict(pretrain.get_config(preset).model)
  values["vocab_size"] = values["vocab_size"] or vocab
  return ModelConfig.from_dict(values)


def test_preset_sizes():
  assert 0.9e6 < model("tiny").num_params() < 0.95e6  # with the 1024-piece vocabulary
  assert 124e6 < model("gpt2_small").num_params() < 125e6  # GPT-2 small: 124M
  assert model("llama_tiny").kv_heads == 2
  assert 1.0e9 < model("llama_1b").num_params() < 1.2e9  # TinyLlama's shape: 1.1B


def test_pipeline_stages_chain_without_their_own_upstream():
  config = pipeline.get_config("tiny")
  assert tuple(config.stages) == ("pretrain", "sft", "reward", "rl")
  assert all("upstream" not in config[s] for s in ("sft", "reward", "rl"))
  assert "upstream" in sft.get_config("tiny")


def test_unknown_preset_and_model_key_are_errors():
  with pytest.raises(ValueError, match="unknown preset"):
    common.base_config("pretrain", "huge")
  with pytest.raises(ValueError, match="unknown model config keys"):
    ModelConfig.from_dict({"vocab_size": 10, "d_modle": 3})


def test_every_stage_declaration_names_a_runner_and_checks_that_exist():
  for name, stage in stage_specs.STAGES.items():
    assert callable(stage_specs.named(stage.runner)), name
    assert not stage.check or callable(stage_specs.named(stage.check)), name
