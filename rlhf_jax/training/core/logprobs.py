"""Log-probabilities of a response under a model, at the sampling temperature.

The RL rollout and loss, and the evaluation of any policy against its reference (RL and DPO),
read them here, so all of them divide by the temperature in one place and agree with the
sampler's own log-probs. They come from the LM head a chunk of positions at a time
(models/head.py), never from the whole [batch, time, vocab] logits.
"""

from rlhf_jax.models.head import TokenStats, next_token_stats


def response_stats(model, params, out, tokens, prompt_len: int, temperature: float) -> TokenStats:
  """Log-prob, entropy and argmax match of each response token, from the model output `out`."""
  return next_token_stats(model, params, out.hidden, tokens, prompt_len, temperature)


def response_logprobs(model, params, tokens, mask, prompt_len: int, temperature: float, segments=None):
  """log p(response token t | what precedes it) at the temperature, [batch, response]; packed
  rows (`segments`, prompt_len 1): of every token after the first."""
  out = model.apply({"params": params}, tokens, mask, segments=segments, with_logits=False)
  return response_stats(model, params, out, tokens, prompt_len, temperature).logprobs
