"""The optimiser: AdamW with linear warmup then cosine decay, and global-norm clipping."""

import jax
import optax


SCHEDULES = ("cosine", "linear")


def learning_rate_schedule(optim_cfg, num_steps: int) -> optax.Schedule:
  """A linear warmup to `lr`, then a cosine (or linear: Huang et al.'s PPO) decay to
  `lr * final_lr_ratio` at the last step."""
  warmup = max(0, min(optim_cfg.warmup_steps, num_steps - 1))  # short runs still decay
  end = optim_cfg.lr * optim_cfg.final_lr_ratio
  if optim_cfg.get("schedule", "cosine") == "linear":
    return optax.join_schedules([optax.linear_schedule(0.0, optim_cfg.lr, warmup),
                                 optax.linear_schedule(optim_cfg.lr, end, max(num_steps - warmup, 1))], [warmup])
  return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=optim_cfg.lr, warmup_steps=warmup,
                                            decay_steps=max(num_steps, warmup + 1), end_value=end)


def decay_mask(params):
  """Weight decay on matrices only: biases and norm scales are left alone."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim_cfg, num_steps: int) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(optim_cfg.grad_clip),
      optax.adamw(learning_rate_schedule(optim_cfg, num_steps), b1=optim_cfg.b1, b2=optim_cfg.b2,
                  eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay, mask=decay_mask),
  )
