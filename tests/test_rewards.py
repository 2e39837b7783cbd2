"""Reward components: the built-in checkers on hand-worked answers, users' functions loaded from
files and modules and called TRL's way, and every way a function can go wrong."""

import concurrent.futures
import importlib.util

import ml_collections
import numpy as np
import pytest

from rlhf_jax import rewards
from rlhf_jax.errors import UserError

USER_FILE = '''
def length_bonus(prompts, completions, completion_ids, topic, **kwargs):
  return [len(c) / 10 if t == "books" else None for c, t in zip(completions, topic)]

def raises(prompts, completions, **kwargs):
  raise KeyError("answer")
'''


def test_checkers_take_the_last_integer_and_gsm8k_answers_after_the_hashes():
  assert rewards.last_integer("12 + 30 = 42, so the answer is 42.") == 42
  assert rewards.last_integer("it is -1,250 or so") == -1250 and rewards.last_integer("none") is None
  completions = ["so 4 + 3 = 7", "the answer is 8", "no idea", "7!"]
  assert rewards.exact_match(None, completions, answer=["7", "7", "7", 7]) == [1.0, 0.0, 0.0, 1.0]
  answers = ["Natalia sold 48 / 2 = 24 clips in May.\n#### 72", "#### 1,000"]
  assert rewards.gsm8k(None, ["48 + 24 = 72", "she has 1000 left"], answer=answers) == [1.0, 1.0]


def test_math_verify_takes_equivalent_latex_answers_within_a_time_limit(monkeypatch):
  completions = [r"so x = \boxed{\frac{1}{2}}", "The answer is 0.5", "I think 2/4", r"$\{1,2\}$",
                 r"x \in \boxed{(0, 1]}", "it is 3", "no answer at all"]
  answers = ["$0.5$", r"\frac12", "1/2", r"\{2, 1\}", r"\left(0,1\right]", "4", "7"]  # bare LaTeX too
  assert rewards.load_function("math_verify")(None, completions, answer=answers) == [1, 1, 1, 1, 1, 0, 0]
  assert "math_verify" in rewards.CHECKERS  # its mean is evaluation's accuracy
  votes = [rewards.final_answer("math_verify", c) for c in (r"\boxed{\frac12}", "so 1/2", "no answer")]
  assert votes == ["1/2", "1/2", None]  # maj@k counts parsed answers
  monkeypatch.setattr(rewards, "MATH_VERIFY_SECONDS", 1)
  tower = [r"$9^{9^{9^{9}}}$"]  # sympy would compute the power for ever: the limit scores it 0
  assert rewards.math_verify(None, tower, answer=[r"$3^{3^{3^{3^{3}}}}$"]) == [0.0]
  with concurrent.futures.ThreadPoolExecutor(1) as pool:  # no SIGALRM off the main thread: no limit, no error
    assert pool.submit(rewards.math_verify, None, completions[:1], answer=answers[:1]).result() == [1.0]
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "math_verify" else real_find_spec(name))
  with pytest.raises(UserError, match="^reward function 'math_verify' needs the math-verify package: pip install"):
    rewards.load_function("math_verify")


def test_functions_load_from_files_modules_and_the_builtins(tmp_path):
  path = tmp_path / "my_rewards.py"
  path.write_text(USER_FILE)
  fn = rewards.load_function(f"{path}:length_bonus")
  assert fn(prompts=["p", "q"], completions=["abcd", "ab"], completion_ids=[[1], [2]],
            topic=["books", "films"]) == [0.4, None]
  assert rewards.load_function("rlhf_jax.rewards:gsm8k") is rewards.gsm8k
  assert rewards.load_function("exact_match") is rewards.exact_match
  for spec, message in ((f"{tmp_path}/nope.py:f", "reward function file not found"),
                        (f"{path}:missing", "has no function 'missing'"), ("vader", "use 'model', a built-in"),
                        ("no_such_module_here:f", "loading no_such_module_here raised ModuleNotFoundError")):
    with pytest.raises(UserError, match=message):
      rewards.load_function(spec)


def test_a_host_component_is_called_with_one_column_entry_per_completion_and_checked(tmp_path):
  seen = {}

  def record(prompts, completions, completion_ids, answer, **kwargs):
    seen.update(prompts=prompts, answer=answer, ids=completion_ids, extra=kwargs)
    return [1, 0.5, np.float32(2), True]
  component = rewards.HostReward("record", record, 1.0)
  scores, given = component(["a", "a", "b", "b"], ["x"] * 4, [[1]] * 4, {"answer": [1, 1, 2, 2], "level": [3, 3, 4, 4]})
  np.testing.assert_array_equal(scores, [1, 0.5, 2, 1])
  assert given.all()
  assert seen == {"prompts": ["a", "a", "b", "b"], "answer": [1, 1, 2, 2], "ids": [[1]] * 4,
                  "extra": {"level": [3, 3, 4, 4]}}
  bad = {"raises": (lambda **kw: 1 / 0, "reward function bad raised ZeroDivisionError: division by zero"),
         "short": (lambda **kw: [1.0], "reward function bad returned 1 scores for 4 completions"),
         "text": (lambda **kw: [1.0, "high", 0.0, 0.0], "returned a non-number for completion 1: 'high'"),
         "scalar": (lambda **kw: 3.0, "returned float, not one score per completion")}
  for fn, message in bad.values():
    with pytest.raises(rewards.RewardError, match=message):
      rewards.HostReward("bad", fn, 1.0)(["a"] * 4, ["x"] * 4, [[1]] * 4, {})


def test_the_weighted_sum_skips_none_and_a_row_no_component_scores_adds_zero(caplog):
  half = rewards.HostReward("half", lambda completions, **kw: [0.5, None, None], 2.0)
  one = rewards.HostReward("one", lambda completions, **kw: [1.0, 1.0, None], 1.0)
  total, per = rewards.score_on_host([half, one], ["p"] * 3, ["c"] * 3, [[0]] * 3, {}, with_model=False)
  np.testing.assert_array_equal(total, [2.0, 1.0, 0.0])  # TRL's nansum, and its warning
  assert "no reward function scored 1 of 3 completions" in caplog.text
  assert set(per) == {"reward/half", "reward/one"} and np.isnan(per["reward/half"][1])
  caplog.clear()
  total, _ = rewards.score_on_host([half, one], ["p"] * 3, ["c"] * 3, [[0]] * 3, {}, with_model=True)
  np.testing.assert_array_equal(total, [2.0, 1.0, 0.0])  # the reward model scores that row
  assert "no reward function scored" not in caplog.text


def test_a_functions_nan_or_inf_is_an_error_naming_it_or_left_to_the_guard(caplog):
  fn = lambda completions, **kw: [1.0, None, float("nan"), float("inf")]
  with pytest.raises(rewards.RewardError, match=r"reward function odd returned nan for completion 2 "
                                                 r"\(2 non-finite of 4\): return a number, or None"):
    rewards.HostReward("odd", fn, 1.0)(["a"] * 4, ["x"] * 4, [[1]] * 4, {})
  guarded = rewards.HostReward("odd", fn, 1.0, nonfinite="guard")
  total, per = rewards.score_on_host([guarded], ["a"] * 4, ["x"] * 4, [[1]] * 4, {}, with_model=True)
  assert total[0] == 1.0 and total[1] == 0.0 and np.isnan(total[2]) and np.isinf(total[3])
  assert "reward function odd returned 2 non-finite scores of 4" in caplog.text


def test_the_plan_names_its_components_and_checks_the_weights(tmp_path):
  cfg = lambda fns, weights=(): ml_collections.ConfigDict(dict(fns=fns, weights=weights))
  plan = rewards.plan(cfg(("model", "exact_match"), (0.5, 2.0)))
  assert plan.model_weight == 0.5 and [h.weight for h in plan.host] == [2.0] and plan.names == ["model", "exact_match"]
  assert rewards.plan(cfg(("gsm8k",))).model_weight is None
  token = rewards.plan(cfg(("length", "gsm8k", "model"), (0.1, 1.0, 2.0)))  # in the graph: no host function
  assert token.token == (("length", 0.1),) and token.names == ["model", "length", "gsm8k"]
  assert token.weights == [2.0, 0.1, 1.0] and token.in_graph
  for fns, weights, message in ((("model", "gsm8k"), (1.0,), "reward.weights has 1 entries for 2"),
                                ((), (), "reward.fns is empty"), (("gsm8k", "gsm8k"), (), "names a source twice")):
    with pytest.raises(UserError, match=message):
      rewards.plan(cfg(fns, weights))
