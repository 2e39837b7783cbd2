"""The Tunix peer's model shape: Tunix's Qwen2 shrunk to our tiny GPT-2, FLOPs per token matched.

Pure arithmetic, no Tunix import, so tests/benchmarks can check it without the peer's environment.
Tunix has no GPT-2; its Qwen2 is the nearest (tied embeddings, biases on q/k/v), with RMSNorm, RoPE and
a SwiGLU MLP where GPT-2 has LayerNorm, learned positions and a GELU MLP.
"""

# Our benchmark model (benchmarks/workloads.py TINY_GPT2).
GPT2 = dict(vocab_size=256, d_model=128, n_layers=4, n_heads=4, d_ff=512)


def swiglu_hidden(d_ff: int) -> int:
  """SwiGLU's hidden width with the FLOPs of a GELU MLP of width `d_ff`.

  GPT-2's MLP is two d x d_ff matmuls (up, down): 2 d d_ff weights per token; SwiGLU has three
  d x h (gate, up, down): 3 d h. Equal at h = 2 d_ff / 3, rounded to the nearest integer.
  """
  return round(2 * d_ff / 3)


def layer_matmul_weights(d_model: int, mlp_width: int, mlp_matrices: int) -> int:
  """Weights of one block's matmuls (q, k, v, out: 4 d^2, plus the MLP's): each costs 2 FLOPs per
  token forward. Biases, norms and attention scores are left out (the same on both sides, or small)."""
  return 4 * d_model ** 2 + mlp_matrices * d_model * mlp_width


def qwen2_fields(gpt2: dict = GPT2) -> dict:
  """Keyword arguments of `tunix.models.qwen2.model.ModelConfig` for our GPT-2's shape: the same
  width, depth, heads (no grouped-query attention), vocabulary and tied embeddings; SwiGLU width from
  `swiglu_hidden`; float32 (Tunix's default dtype)."""
  return dict(num_layers=gpt2["n_layers"], vocab_size=gpt2["vocab_size"], embed_dim=gpt2["d_model"],
              hidden_dim=swiglu_hidden(gpt2["d_ff"]), num_heads=gpt2["n_heads"],
              head_dim=gpt2["d_model"] // gpt2["n_heads"], num_kv_heads=gpt2["n_heads"], rope_theta=10_000,
              norm_eps=1e-5, use_tied_embedding=True)


def flops_ratio(gpt2: dict = GPT2) -> float:
  """Tunix model's matmul weights per layer over GPT-2's (1.0: the same FLOPs per token)."""
  fields = qwen2_fields(gpt2)
  theirs = layer_matmul_weights(fields["embed_dim"], fields["hidden_dim"], 3)
  return theirs / layer_matmul_weights(gpt2["d_model"], gpt2["d_ff"], 2)
