"""The learning-rate schedules: a linear warmup, then a cosine or (Huang et al.'s PPO) linear
decay to lr x final_lr_ratio at the last step; a schedule no one has is a one-line error."""

import ml_collections
import numpy as np
import pytest

from configs import rl
from rlhf_jax import stages
from rlhf_jax.errors import UserError
from rlhf_jax.training.core.optim import learning_rate_schedule


def rates(schedule: str, warmup: int = 2, steps: int = 10) -> list:
  cfg = ml_collections.ConfigDict(dict(lr=1.0, warmup_steps=warmup, final_lr_ratio=0.0, schedule=schedule))
  return [float(learning_rate_schedule(cfg, steps)(i)) for i in range(steps + 1)]


def test_linear_decay_falls_by_equal_steps_to_the_final_rate_after_the_warmup():
  np.testing.assert_allclose(rates("linear"), [0, 0.5, 1, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0], atol=1e-6)
  np.testing.assert_allclose(rates("linear", warmup=0)[:3], [1, 0.9, 0.8], atol=1e-6)
  cosine = rates("cosine")
  assert cosine[2] == pytest.approx(1) and cosine[6] == pytest.approx(0.5) and cosine[3] > 0.875  # slower at first


def test_an_unknown_schedule_is_one_line():
  cfg = rl.get_config("tiny")
  cfg.value_optim.schedule = "step"
  with pytest.raises(UserError, match="value_optim.schedule='step': choose one of"):
    stages.check_train_fields(cfg)
