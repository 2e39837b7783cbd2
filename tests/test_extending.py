"""docs/extending.md's recipes, run: its code blocks become a user's file that `config.plugins`
names, and each method it registers is used as a config uses a built-in one."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dpo as dpo_config
from configs import rl as rl_config
from rlhf_jax import plugins, rewards, rl_plan
from rlhf_jax.algorithms import advantages, aggregation, dpo, policy_losses, presets
from rlhf_jax.errors import UserError
from rlhf_jax.training.preference import dpo_trainer
from rlhf_jax.training.rl import rl_trainer
from tests.training.rl.test_rl_steps import setup

PAGE = os.path.join(os.path.dirname(__file__), "..", "docs", "extending.md")
REGISTRIES = (advantages.ADVANTAGES, policy_losses.POLICY_LOSSES, aggregation.LOSS_AGGREGATIONS,
              presets.ALGORITHMS, dpo.PREFERENCE_LOSSES, rewards.BUILTINS)


@pytest.fixture
def user_file(tmp_path):
  """The page's code blocks as one file; the registries as they were afterwards."""
  saved, checkers = [dict(r) for r in REGISTRIES], list(rewards.CHECKERS)
  blocks = re.findall(r"```python\n(.*?)```", open(PAGE).read(), re.S)
  path = tmp_path / "my_methods.py"
  path.write_text("\n".join(blocks))
  yield str(path)
  for registry, before in zip(REGISTRIES, saved):
    registry.clear()
    registry.update(before)
  rewards.CHECKERS[:] = checkers


def test_the_recipes_register_methods_a_config_names(user_file):
  cfg = rl_config.get_config("tiny")
  cfg.update(dict(plugins=(user_file,), algo="median_pg"))
  cfg.reward.fns = ("model", "concise")
  plugins.load(plugins.of(cfg))
  plan = rl_plan.resolve(cfg)
  assert (plan.fields["advantage"], plan.fields["policy_loss"], plan.fields["loss_aggregation"]) == (
      "median_baseline", "vanilla_pg", "seq_mean_token_sqrt")
  assert plan.fields["samples_per_prompt"] == 4 and plan.critic is None
  rl_trainer.check_config(cfg)
  assert [h.name for h in plan.rewards.host] == ["concise"]
  assert rewards.BUILTINS["concise"](None, ["short one", " ".join(["w"] * 40)], None) == [1.0, 0.0]
  preference = dpo_config.get_config("tiny")
  preference.dpo.loss = "exponential"
  dpo_trainer.check_config(preference)


def test_the_plugin_algorithm_trains_in_the_compiled_iteration(user_file):
  plugins.load((user_file,))
  returns = jnp.array([1.0, 2.0, 10.0, 3.0])  # one group of 4: median 2.5, the outlier moves nothing
  mask = jnp.ones((4, 3))
  inputs = advantages.AdvantageInputs(jnp.zeros((4, 3)).at[:, -1].set(returns), returns, jnp.zeros((4, 3)), mask,
                                      jnp.float32(0.0))
  out = advantages.ADVANTAGES["median_baseline"].fn(inputs, advantages.AdvantageParams(group_size=4))
  np.testing.assert_allclose(out.advantages[:, 0], [-1.5, -0.5, 7.5, 0.5])
  state, step, prompts = setup(algo="median_pg")  # tests/training/test_rl_steps.py's programmatic reward
  scores = []
  for _ in range(15):
    state, metrics = step(state, prompts, jnp.ones_like(prompts))
    scores.append(float(metrics["score"]))
  assert np.mean(scores[-3:]) > np.mean(scores[:3]) + 0.2, scores


def test_the_preference_recipe_is_the_exponential_loss(user_file):
  plugins.load((user_file,))
  x = dpo.PreferenceInputs(*(jnp.array([v]) for v in (-1.0, -3.0, -2.0, -2.0, 4.0, 4.0)))
  hp = dpo.PreferenceParams(beta=0.5)
  np.testing.assert_allclose(dpo.preference_losses(x, "exponential", hp), np.exp(-0.5 * 2.0), rtol=1e-6)
  grad = jax.grad(lambda chosen: dpo.preference_losses(x._replace(policy_chosen=chosen), "exponential", hp)[0])
  assert float(grad(x.policy_chosen)[0]) < 0  # raising the chosen response lowers the loss


def test_a_bad_plugin_is_one_line_naming_it(user_file, tmp_path):
  broken = tmp_path / "broken.py"
  broken.write_text("raise RuntimeError('no GPU here')\n")
  with pytest.raises(UserError, match=r"plugins: .*broken.py failed to import: RuntimeError: no GPU here"):
    plugins.load((str(broken),))
  with pytest.raises(UserError, match="plugins: .*missing.py not found"):
    plugins.load((str(tmp_path / "missing.py"),))
  with pytest.raises(UserError, match="advantage estimator 'grpo' is registered already"):
    advantages.register("grpo", lambda x, hp: None)
