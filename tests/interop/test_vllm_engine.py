"""vLLM's requests stop where our samplers do: at EOS or any other stop id (vLLM keeps the stop
token as the completion's last id, as our samplers keep EOS)."""

import pytest

from rlhf_jax.interop import vllm_engine


def test_every_stop_id_reaches_the_requests_and_replayed_lengths_ignore_them():
  gemma = vllm_engine.stop_limits(2, 16, (1, 106))
  assert gemma == [dict(max_tokens=16, stop_token_ids=[1, 106])] * 2
  assert vllm_engine.stop_limits(1, 16, (1,)) == [dict(max_tokens=16, stop_token_ids=[1])]
  assert vllm_engine.stop_limits(2, 16, (1, 106), stop_at=[3, 5]) == [dict(max_tokens=3, ignore_eos=True),
                                                                      dict(max_tokens=5, ignore_eos=True)]


@pytest.mark.skipif(not vllm_engine.available(), reason="vLLM is not installed (pip install -e '.[vllm]')")
def test_vllms_sampling_params_take_the_stop_ids():
  import vllm  # pylint: disable=g-import-not-at-top
  limits = vllm_engine.stop_limits(1, 16, (1, 106))[0]
  params = vllm.SamplingParams(temperature=1.0, seed=0, logprobs=0, detokenize=False, **limits)
  assert list(params.stop_token_ids) == [1, 106] and params.max_tokens == 16 and not params.ignore_eos
