"""Model FLOPs, counted from the shapes (matmuls only; the rest is noise): what every run logs
as `compute/flops` and the benchmarks divide by their times.

The usual convention (Kaplan et al. 2020; PaLM's MFU; llm.c): a forward pass costs 2 FLOPs per
matmul weight per token, plus 4 * layers * d_model * context for attention's QK^T and AV;
a training step costs 3 forwards (6N + 12 L d T per token). A sliding-window layer (Gemma 3's
local layers) attends to at most its window: its context is min(T, window). Counted the same way
for us and for the peer, so the ratio of FLOP/s is the ratio of speeds.
"""

from rlhf_jax.models.config import ModelConfig


def matmul_weights(cfg: ModelConfig, logits: bool = True) -> int:
  """Weights that multiply activations: attention, MLP and (with `logits`) the LM head; of an MoE
  MLP the router and experts_per_token experts (dropless: every token's choices are computed)."""
  q_and_out = 2 * cfg.d_model * cfg.n_heads * cfg.dim_per_head
  keys_and_values = 2 * cfg.d_model * cfg.kv_heads * cfg.dim_per_head
  mlp = (3 if cfg.gated_mlp else 2) * cfg.d_model * cfg.d_ff
  if cfg.n_experts:  # the router, and the experts a token goes through (its active weights)
    mlp = cfg.d_model * cfg.n_experts + cfg.experts_per_token * 3 * cfg.d_model * cfg.expert_dim
  head = cfg.d_model * cfg.vocab_size if logits else 0
  return cfg.n_layers * (q_and_out + keys_and_values + mlp) + head


def layer_keys(cfg: ModelConfig, layer: int, context: int) -> int:
  """The keys a query of `layer` attends to in a context of `context` tokens: all of them in a
  full layer, at most the window in a sliding one."""
  return min(context, cfg.sliding_window) if cfg.is_sliding(layer) else context


def attended(cfg: ModelConfig, context: int) -> int:
  """`layer_keys` summed over the layers."""
  return sum(layer_keys(cfg, layer, context) for layer in range(cfg.n_layers))


def forward(cfg: ModelConfig, rows: int, length: int, logits: bool = True) -> float:
  """One forward pass over [rows, length] tokens, attention over the whole length."""
  per_token = 2 * matmul_weights(cfg, logits) + 4 * cfg.n_heads * cfg.dim_per_head * attended(cfg, length)
  return float(rows) * length * per_token


def score(cfg: ModelConfig, rows: int, length: int, queries: int = 1) -> float:
  """A reward model's forward pass (`Transformer`'s query_index): every block over the whole
  row but the last, which projects keys and values of every token and runs the rest (queries,
  attention, MLP) at `queries` tokens per row; no LM head."""
  weights = 2 * (matmul_weights(cfg, logits=False) // cfg.n_layers)
  keys_and_values = 2 * 2 * cfg.d_model * cfg.kv_heads * cfg.dim_per_head
  attention = [4 * cfg.n_heads * cfg.dim_per_head * layer_keys(cfg, layer, length) for layer in range(cfg.n_layers)]
  first = sum(rows * length * (weights + a) for a in attention[:-1])
  last = rows * (length * keys_and_values + queries * (weights - keys_and_values + attention[-1]))
  return float(first + last)


def train(cfg: ModelConfig, rows: int, length: int, logits: bool = True) -> float:
  """Forward and backward (twice the forward) over [rows, length]."""
  return 3 * forward(cfg, rows, length, logits)


def generate(cfg: ModelConfig, rows: int, prompt_len: int, new_tokens: int) -> float:
  """Prefill of the prompt, then one token at a time attending to the cache: the model work
  of `new_tokens` sampled tokens (the last one is sampled, not fed back)."""
  prefill = forward(cfg, rows, prompt_len)
  attention = 4 * cfg.n_heads * cfg.dim_per_head
  decode = sum(rows * (2 * matmul_weights(cfg) + attention * attended(cfg, prompt_len + i + 1))
               for i in range(new_tokens - 1))
  return prefill + decode


def rl_iteration(policy: ModelConfig, rows: int, prompt_len: int, new_tokens: int, epochs: int,
                 critic: bool, reward_model: bool = True, extra_rows: int = 0, greedy_rows: int = 0,
                 off_policy: bool = False, reused_scoring: bool = False) -> float:
  """Rollout, then `epochs` updates of the policy (and critic) over the `rows` the update keeps.
  The rollout generates those rows, `extra_rows` more (DAPO's oversampled prompts) and
  `greedy_rows` (ReMax's greedy baseline), all scored by the reward model (if one); the kept
  rows are scored by the policy, the reference and the critic, the policy's and critic's pass
  being the first update's forward when `reused_scoring` (rl_steps.reuses_scoring_pass). The
  reward model and critic are counted at the policy's shape, without its LM head. Off-policy,
  the sampler also scores what it drew with the trainer's forward pass (its log-prob check,
  off_policy.py)."""
  length, drawn = prompt_len + new_tokens, rows + extra_rows + greedy_rows
  scoring = forward(policy, rows, length)  # the reference
  if not reused_scoring:
    scoring += forward(policy, rows, length) + (forward(policy, rows, length, logits=False) if critic else 0.0)
  rewards = score(policy, drawn, length) if reward_model else 0.0
  check = forward(policy, rows + extra_rows, length) if off_policy else 0.0
  updates = train(policy, rows, length) + (train(policy, rows, length, logits=False) if critic else 0.0)
  return generate(policy, drawn, prompt_len, new_tokens) + scoring + rewards + check + epochs * updates


def dpo_step(cfg: ModelConfig, pairs: int, length: int, packed: bool = False) -> float:
  """Reference forward and policy forward + backward over chosen and rejected: 2 * pairs rows of
  `length`, or packed (data.pack), `pairs` rows of 2 * length."""
  rows, length = (pairs, 2 * length) if packed else (2 * pairs, length)
  return forward(cfg, rows, length) + train(cfg, rows, length)


def reward_step(cfg: ModelConfig, pairs: int, length: int, packed_slots: int = 0) -> float:
  """Forward + backward (twice the forward) of `score` over chosen and rejected: 2 * pairs rows,
  or packed, `pairs` rows of 2 * length scored at 2 * packed_slots tokens each."""
  if packed_slots:
    return 3 * score(cfg, pairs, 2 * length, 2 * packed_slots)
  return 3 * score(cfg, 2 * pairs, length)
