"""What a stage holds frozen and where it comes from: the reward run it scores with, the
proxy score of its reward model, and its state's models loaded from the finished runs they
start from. The RL and DPO stages share it.
"""

import functools

from rlhf_jax.errors import UserError
from rlhf_jax.models.transformer import sequence_scalars
from rlhf_jax.training.core import setup
from rlhf_jax.training.core import state as state_lib
from rlhf_jax.training.policy.policy_state import assemble_policy_state
from rlhf_jax.workdir import RunDir


def reward_run_of(cfg) -> RunDir:
  reward_run = RunDir(cfg.reward_from) if cfg.reward_from else None
  if reward_run is None or not reward_run.finished:
    raise UserError(f"reward_from={cfg.reward_from!r}: the {cfg.stage} stage needs a finished reward run")
  return reward_run


def proxy_scores(state, tokens, mask, sampled, *, scorer, gain: float, bias: float):
  """The frozen reward model's normalised score of prompt + response, at its last real token."""
  return gain * sequence_scalars(state.reward, tokens, mask, model=scorer) + bias


def proxy_score_fn(scorer, reward_run: RunDir):
  """`proxy_scores` normalised by the gain and bias the reward stage measured on SFT samples."""
  norm = reward_run.read_json("summary.json")
  return functools.partial(proxy_scores, scorer=scorer, gain=norm["reward_gain"], bias=norm["reward_bias"])


def load_state(sources: dict, build, mesh, rules, seed: int, continue_adapters: bool = False):
  """A state (`build(**params)`: an RLState or a PolicyState) whose params are read from finished
  runs: `sources` maps each part (policy, reward, value) to (model, run, rename); the reference
  starts as a copy of the policy (with LoRA: is the policy's base). A LoRA source gives its
  merged weights, or with `continue_adapters` the models started from the policy's source keep
  its adapters. Returns (state, shardings)."""
  def load(name, fresh, where):
    _, run, rename = sources[name]
    merged = not (continue_adapters and run is sources["policy"][1])
    return setup.load_source_params(run, fresh, where, mesh, rules, rename, merged=merged)

  models = {name: model for name, (model, _, _) in sources.items()}
  return state_lib.place(models, build, mesh, rules, seed, load)


def load_policy_state(sources: dict, tx, mesh, rules, seed: int, continue_adapters: bool = False):
  """A PolicyState (DPO, best-of-n) from the policy's and the reward model's runs."""
  build = functools.partial(assemble_policy_state, tx=tx, seed=seed)
  return load_state(sources, build, mesh, rules, seed, continue_adapters)
