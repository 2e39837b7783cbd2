"""Pretraining: next-token cross-entropy on packed documents.

  python -m rlhf_jax.main --config=configs/pretrain.py:tiny --workdir=runs/pretrain
  python -m rlhf_jax.main --config=configs/pretrain.py:gpt2_small --workdir=runs/gpt2 \
      --config.data.source=tfds:tiny_shakespeare

Presets: tiny (GPT-2-style, ~3 min on 2 CPU cores), llama_tiny, gpt2_small (124M, accelerator).
"""

from configs import common


def get_config(preset: str = "tiny"):
  return common.base_config("pretrain", preset)
