"""A verifiable task's evaluation: greedy accuracy, pass@k, mean@k and maj@k."""

import types

import numpy as np

from rlhf_jax import rewards
from rlhf_jax.data.prompts import Prompts
from rlhf_jax.data.tokenizers import ByteTokenizer
from rlhf_jax.models.sampling import SampleOutput
from rlhf_jax.training.policy.policy_eval import PolicyEvaluator, majority_verdicts


def scripted_sampler(batches: list):
  """A sampler that writes the next batch of texts at each call (greedy first, then the k draws)."""
  tokenizer, calls = ByteTokenizer(), iter(batches)

  def sample(params, prompts, mask, rng, sampling):
    del params, prompts, mask, rng
    texts = next(calls)
    ids = [tokenizer.encode(t) + [tokenizer.eos_id] for t in texts]
    tokens = np.full((len(ids), max(map(len, ids))), tokenizer.pad_id, np.int32)
    out_mask = np.zeros_like(tokens)
    for row, x in enumerate(ids):
      tokens[row, :len(x)], out_mask[row, :len(x)] = x, 1
    sample.greedy.append(bool(sampling.greedy))
    return SampleOutput(tokens, np.zeros(tokens.shape, np.float32), out_mask)

  sample.greedy = []
  return sample


class Config(types.SimpleNamespace):
  def __contains__(self, key):  # as ConfigDict answers `"eval" in cfg`
    return hasattr(self, key)


def evaluator(sampler, k: int) -> PolicyEvaluator:
  e = object.__new__(PolicyEvaluator)  # only what `verifiable` uses
  e.cfg = Config(eval=Config(k=k), sample=Config(temperature=0.7))
  e.sampler, e.tokenizer = sampler, ByteTokenizer()
  e.prompts = Prompts(["a?", "b?", "c?"], None, None, columns={"answer": ["5", "7", "9"]})
  e.host = (rewards.HostReward("exact_match", rewards.exact_match, 1.0),)
  return e


def test_greedy_pass_mean_and_majority_over_k_samples():
  draws = [["so 5", "so 1", "so 2"],  # greedy
           ["so 5", "so 7", "so 3"], ["so 4", "so 3", "so 3"], ["so 5", "so 3", "so 9"]]
  sampler = scripted_sampler(draws)
  per = evaluator(sampler, k=3).verifiable(None, "exact_match", None, None, np.zeros(2, np.uint32))
  assert sampler.greedy == [True, False, False, False]
  np.testing.assert_array_equal(per["greedy_accuracy"], [1, 0, 0])
  np.testing.assert_array_equal(per["pass@3"], [1, 1, 1])  # every prompt has one right answer ...
  np.testing.assert_allclose(per["mean@3"], [2 / 3, 1 / 3, 1 / 3])
  np.testing.assert_array_equal(per["maj@3"], [1, 0, 0])  # ... but 3 outvotes 7 and 9
  e = evaluator(scripted_sampler(draws[:1]), k=0)
  assert set(e.verifiable(None, "exact_match", None, None, None)) == {"greedy_accuracy"}


def test_majority_ties_go_to_the_answer_drawn_first_and_no_answer_scores_zero():
  verdicts = np.array([[0, 1], [0, 0], [0, 1]], np.float32)
  assert majority_verdicts([[1, 2], [None, None], [None, 4]], verdicts).tolist() == [0, 0, 1]
