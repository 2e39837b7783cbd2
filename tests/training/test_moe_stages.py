"""The tiny MoE preset (configs/common.py: tiny_moe) trains: pretraining then SFT, the
load-balancing loss logged beside the LM loss."""

import math

from configs import sft
from rlhf_jax import stages
from tests.conftest import shrink
from tests.test_main import read_metrics


def test_tiny_moe_pretrains_and_fine_tunes_logging_the_router_aux_loss(tmp_path):
  config = shrink(sft.get_config("tiny_moe"), steps=4)
  shrink(config.upstream.pretrain, steps=4)
  assert (config.model.n_experts, config.model.experts_per_token, config.model.router_aux_coef) == (4, 2, 0.01)
  stages.run(config, str(tmp_path / "sft"))
  for run in (tmp_path / "sft" / "upstream" / "pretrain", tmp_path / "sft"):
    aux = [row["router_aux_loss"] for row in read_metrics(str(run)) if "router_aux_loss" in row]
    # E * sum_e f_e P_e: k (2) when the routing is balanced, at most E * k (8).
    assert aux and all(1.5 < value < 8 and math.isfinite(value) for value in aux), aux
