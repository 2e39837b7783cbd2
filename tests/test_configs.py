"""Every config file and preset loads, and the presets have the sizes they claim."""

import pytest

from configs import common, pipeline, pretrain, sft
from rlhf_jax.models.config import ModelConfig

PRESETS = ("tiny", "llama_tiny", "gpt2_small")


@pytest.mark.parametrize("module", [pretrain, sft, pipeline])
@pytest.mark.parametrize("preset", PRESETS)
def test_configs_load(module, preset):
  config = module.get_config(preset)
  assert config.stage in ("pretrain", "sft", "pipeline")


def model(preset, vocab=384):
  values = dict(pretrain.get_config(preset).model)
  values["vocab_size"] = values["vocab_size"] or vocab
  return ModelConfig.from_dict(values)


def test_preset_sizes():
  assert 0.8e6 < model("tiny").num_params() < 0.9e6
  assert 124e6 < model("gpt2_small").num_params() < 125e6  # GPT-2 small: 124M
  assert model("llama_tiny").kv_heads == 2


def test_pipeline_stages_chain_without_their_own_upstream():
  config = pipeline.get_config("tiny")
  assert tuple(config.stages) == ("pretrain", "sft", "reward", "ppo")
  assert all("upstream" not in config[s] for s in ("sft", "reward", "ppo"))
  assert "upstream" in sft.get_config("tiny")


def test_unknown_preset_and_model_key_are_errors():
  with pytest.raises(ValueError, match="unknown preset"):
    common.base_config("pretrain", "huge")
  with pytest.raises(ValueError, match="unknown model config keys"):
    ModelConfig.from_dict({"vocab_size": 10, "d_modle": 3})
