"""A finished run of ours as the pairwise judge, and asking both orders against its position bias."""

import numpy as np
import pytest

from rlhf_jax import pairwise_judge
from rlhf_jax.errors import UserError

PROMPTS = ["I thought the food", "The staff", "My visit"]
A = ["was wonderful and I loved it.", "were rude.", "was fine."]
B = ["was awful and cold.", "were kind and helpful!", "was fine."]


def test_order_swapping_cancels_a_judge_models_pull_towards_position_a(tiny_upstream):
  judge = pairwise_judge.PairwiseJudge(tiny_upstream["init_from"], pairwise_judge.PREFERENCE_TEMPLATE, batch=4,
                                       setting="preference.judge")  # the SFT run's directory
  fair, fair_agree = pairwise_judge.both_orders(judge, PROMPTS, A, B)
  assert fair[2] == pytest.approx(0.5, abs=1e-6)  # identical responses tie
  unbiased = judge.forward

  def pulled(pull):  # the " A" logit raised by `pull` whatever the judge reads
    judge.forward = lambda params, tokens, mask: unbiased(params, tokens, mask).at[:, judge.choices[0]].add(pull)

  pulled(2.0)  # (sigmoid(d + 2) + sigmoid(d - 2)) / 2 keeps the sign of the judge's own margin d
  labels, _ = pairwise_judge.both_orders(judge, PROMPTS, A, B)
  np.testing.assert_array_equal(np.sign(np.round(labels - 0.5, 6)), np.sign(np.round(fair - 0.5, 6)))
  pulled(50.0)  # a judge answering A to everything
  np.testing.assert_allclose(judge.first_preferred(PROMPTS, A, B), 1.0)  # one order: the bias decides every pair
  labels, agree = pairwise_judge.both_orders(judge, PROMPTS, A, B)
  np.testing.assert_allclose(labels, 0.5, atol=1e-6)  # both: it cancels, and the two orders never agree
  assert not agree.any() and fair_agree.dtype == bool

def test_a_judge_is_hf_dir_or_a_finished_language_model_run_and_one_still_to_come_passes_the_check(tiny_upstream,
                                                                                                tmp_path):
  assert pairwise_judge.is_model(tiny_upstream["init_from"]) and not pairwise_judge.is_model("vader")
  later = str(tmp_path / "judge")  # an earlier stage of the pipeline or sweep writes it
  assert pairwise_judge.check_source(later, "preference.judge", pending=True) == later
  with pytest.raises(UserError, match="expected hf:DIR, a local Hugging Face causal LM, or a finished run's"):
    pairwise_judge.check_source(later, "preference.judge")
  with pytest.raises(UserError, match="no summary.json there"):
    pairwise_judge.check_source(str(tmp_path), "preference.judge", pending=True)
  with pytest.raises(UserError, match="a reward run; a judge is a language model's run"):
    pairwise_judge.PairwiseJudge(tiny_upstream["reward_from"], setting="preference.judge")
