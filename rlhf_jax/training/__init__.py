"""Training, grouped by what it trains: core/ (the loop, the state, the optimiser, guards, jit
helpers, run set-up), lm/ (pretraining and SFT), preference/ (pairs, the reward model, DPO),
policy/ (a policy's own state, evaluation, the frozen models, best-of-n) and rl/ (the RL stage).
Imports run downward: core below everything, policy below preference and rl.

The entry points other packages use (the memory planner, export) are the names below."""

from rlhf_jax.training.core.optim import make_optimizer
from rlhf_jax.training.core.setup import frozen_model_config, run_params

__all__ = ["frozen_model_config", "make_optimizer", "run_params"]
