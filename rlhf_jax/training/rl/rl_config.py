"""The RL iteration's static hyperparameters (`RLConfig`) and the update's batch (`Rollout`)."""

import dataclasses
from typing import Any, NamedTuple

import jax

from rlhf_jax.algorithms.advantages import ADVANTAGES, AdvantageParams
from rlhf_jax.algorithms.policy_losses import PolicyLossParams
from rlhf_jax.algorithms.rollout_correction import CorrectionParams
from rlhf_jax.algorithms.token_rewards import TokenRewardParams


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """Static hyperparameters, resolved (rl_plan.py: the algorithm's preset fills what the config
  leaves None); PPO defaults from Huang et al. 2024."""
  max_new_tokens: int
  stop_ids: tuple  # the tokenizer's: a response ends at any of these, EOS first (sampling.is_stop)
  pad_id: int
  algo: str = "ppo"
  advantage: str = "gae"  # algorithms/advantages.py
  policy_loss: str = "clip"  # algorithms/policy_losses.py
  loss_aggregation: str = "token_mean"  # algorithms/aggregation.py
  samples_per_prompt: int = 1  # k: grouped estimators compare the k responses to one prompt
  temperature: float = 0.7
  batching: str = "static"  # models/continuous.py: static, continuous or paged with `slots` (0: a quarter of the rows)
  slots: int = 0
  cache_blocks: int = 0  # batching "paged": the pool's blocks (0: models/continuous.paged_blocks), of block_size
  block_size: int = 16
  paged_attention: str = "xla"  # models/paged.py: PAGED_KERNELS
  epochs: int = 4
  minibatches: int = 1
  accum_steps: int = 1  # microbatches per minibatch (gradient accumulation)
  packing: bool = False  # training/rl/packing.py: scoring and updates on trajectories packed into rows
  pack_rows: int = 0  # rows of a packed microbatch (0: an eighth of a padded microbatch's rows)
  clip_eps: float = 0.2  # the clip range's lower side (and upper, unless clip_eps_high says)
  clip_eps_high: float = 0.2
  dual_clip: float = 3.0
  value_clip: float = 0.2
  vf_coef: float = 0.1
  ent_coef: float = 0.0
  gamma: float = 1.0
  lam: float = 0.95
  baseline_decay: float = 0.9  # REINFORCE's moving average
  scale_by_std: bool = True  # GRPO: divide by the group's std
  dynamic_sampling: bool = False  # DAPO: groups whose k scores are all equal get weight 0
  overlong_buffer: float = 0.0  # DAPO: a soft length penalty over this fraction of the budget's end
  oversample: int = 0  # DAPO: extra prompts drawn per iteration, so informative groups can fill the batch
  model_weight: float | None = 1.0  # the reward model's weight in the score (None: there is none)
  host_rewards: tuple = ()  # the names of the host reward components (rewards.py), in order
  token_rewards: tuple = ()  # (name, weight) of the token rewards (algorithms/token_rewards.py), in order
  format_ids: tuple = ()  # reward.format_text's ids (the `format` token reward)
  kl_kind: str = "k1"
  kl_in_loss: bool = False  # the KL as a k3 loss term (GRPO's choice) instead of in the reward
  kl_target: float = 6.0
  kl_horizon: float = 10000.0
  adaptive_kl: bool = False
  no_eos_penalty: float = -1.0
  penalise_no_eos: bool = True
  inject_nan_at: tuple = ()  # fault injection (tests): these iterations' scores are NaN
  off_policy_steps: int = 0  # K: updates train on responses sampled K iterations before (off_policy.py)
  is_correction: str = "none"  # algorithms/importance.py: the critic-free methods' weight on stale tokens
  is_cap: float = 2.0
  rollout_correction: str = "none"  # algorithms/rollout_correction.py: the sampler/trainer mismatch's weight
  rollout_correction_cap: float = 2.0
  rollout_correction_bounds: tuple = (0.5, 2.0)  # the rejections' [low, high] on the ratio
  reuse_scoring_pass: bool = True  # the first update differentiates the scoring pass (one minibatch only)
  router_replay: bool = False  # an MoE policy's recomputation and updates use the sampler's experts (R3)

  def packed_rows(self, batch_rows: int) -> int:
    """Rows of a packed microbatch, for a rollout of `batch_rows` rows."""
    return self.pack_rows or max(1, batch_rows // (self.minibatches * self.accum_steps * 8))

  @property
  def has_critic(self) -> bool:
    return ADVANTAGES[self.advantage].needs_critic

  @property
  def needs_greedy(self) -> bool:
    return ADVANTAGES[self.advantage].needs_greedy

  @property
  def policy_loss_params(self) -> PolicyLossParams:
    return PolicyLossParams(self.clip_eps, self.clip_eps_high, self.dual_clip)

  @property
  def correction_params(self) -> CorrectionParams:
    return CorrectionParams(self.rollout_correction_cap, *self.rollout_correction_bounds)

  @property
  def token_reward_params(self) -> TokenRewardParams:
    return TokenRewardParams(self.max_new_tokens, self.format_ids)

  @property
  def advantage_params(self) -> AdvantageParams:
    return AdvantageParams(self.samples_per_prompt, self.gamma, self.lam, self.baseline_decay, self.scale_by_std)


class Rollout(NamedTuple):
  tokens: jax.Array  # [batch, prompt + new] prompt then response
  mask: jax.Array  # [batch, prompt + new] real tokens
  logprobs: jax.Array  # [batch, new] at sampling time (the "old" policy)
  ref_logprobs: jax.Array  # [batch, new] under the frozen reference
  values: jax.Array  # [batch, new] (0 without a critic)
  advantages: jax.Array  # [batch, new]
  returns: jax.Array  # [batch, new] the critic's targets
  weights: jax.Array  # [batch] 1, or 0 for a response dynamic sampling leaves out
  loss_mask: jax.Array  # [batch, new] the policy's tokens: the response mask, less a multi-turn environment's tokens
  is_weights: Any = None  # [batch, new] off-policy: each token's importance correction (None: on-policy)
  experts: Any = None  # [batch, layers, prompt + new, k] the sampler's experts, replayed (rl.router_replay; else None)
