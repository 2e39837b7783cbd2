"""Non-finite guards, inside the compiled steps.

An update whose loss, gradients or (RL) rewards are not all finite is not applied: params and
optimizer states keep their values, so a NaN never reaches them. The step still counts (its
batch is consumed), and its metrics say what happened: `nonfinite_<quantity>` flags and
`skipped_updates`. The host loop then goes on (train.on_nonfinite="skip") or checkpoints and
stops with an error naming the step and the quantity ("stop"; see training/core/loop.py).

optax.apply_if_finite skips on non-finite gradients alone and keeps its count inside the
optimizer state; here the loss and the rewards decide too, and the flags are metrics.
"""

import jax
import jax.numpy as jnp
import optax

ON_NONFINITE = ("stop", "skip")


def all_finite(tree) -> jax.Array:
  """True (a bool scalar) when every element of every leaf is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def select(ok: jax.Array, new, old):
  """`new` where ok, else `old`, leaf by leaf (a select: no NaN * 0 arithmetic); for a few
  small leaves (`apply_if` for params and optimizer states)."""
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def check(**quantities) -> tuple[jax.Array, dict]:
  """(all finite?, metrics): one `nonfinite_<name>` flag (0/1) per quantity, `skipped_updates`."""
  flags = {name: jnp.logical_not(all_finite(value)) for name, value in quantities.items()}
  ok = jnp.logical_not(jnp.any(jnp.stack(list(flags.values()))))
  metrics = {f"nonfinite_{name}": flag.astype(jnp.float32) for name, flag in flags.items()}
  return ok, {**metrics, "skipped_updates": jnp.logical_not(ok).astype(jnp.float32)}


def apply_if(ok: jax.Array, update, state):
  """update(state) when `ok`, else `state` unchanged: one lax.cond. (A select over every param
  and optimizer state doubled the reward step's compile time on XLA:CPU, 4 s -> 9 s, W3.)"""
  return jax.lax.cond(ok, update, lambda unchanged: unchanged, state)


def guarded_update(tx, grads, opt_state, params, ok: jax.Array):
  """(params, opt_state) after tx's update when `ok`, else unchanged."""
  def update(state):
    params, opt_state = state
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  return apply_if(ok, update, (params, opt_state))


def with_injected_nan(loss_fn, step: jax.Array, steps: tuple):
  """loss_fn(params, batch) -> (loss, aux), its loss times `injected_nan`."""
  if not steps:
    return loss_fn

  def poisoned(params, batch):
    loss, aux = loss_fn(params, batch)
    return loss * injected_nan(step, steps), aux
  return poisoned


def injected_nan(step: jax.Array, steps: tuple) -> jax.Array:
  """NaN at the updates numbered `steps` (1-based, as logged), else 1.0: multiplied into a
  loss or the rewards, it is the fault injection (train.inject_nan_at) that tests the guards
  end to end. With no steps it is a Python 1.0, so nothing is added to the graph."""
  if not steps:
    return 1.0
  return jnp.where(jnp.isin(step + 1, jnp.asarray(steps)), jnp.nan, 1.0)
