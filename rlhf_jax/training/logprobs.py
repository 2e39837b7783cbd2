"""Log-probabilities of a response under a model, at the sampling temperature.

The RL rollout and loss, and the evaluation of any policy against its reference (RL and DPO),
read them here, so all of them divide by the temperature in one place and agree with the
sampler's own log-probs.
"""

from rlhf_jax.algorithms.lm import token_logprobs


def response_logits(logits, prompt_len: int, temperature: float):
  """The logits predicting each response token, at the sampling temperature."""
  return logits[:, prompt_len - 1:-1] / temperature


def response_logprobs(model, params, tokens, mask, prompt_len: int, temperature: float):
  """log p(response token t | what precedes it) at the temperature, [batch, response]."""
  logits = model.apply({"params": params}, tokens, mask).logits
  return token_logprobs(response_logits(logits, prompt_len, temperature), tokens[:, prompt_len:])
