"""Mixture-of-experts MLP (Qwen3-MoE, Mixtral): a router sends each token to k of E SwiGLU experts.

Routing as both compute it: router logits, a softmax over every expert in float32, the top k,
their probabilities renormalised to sum to one iff `norm_topk_prob` (Mixtral always does).
Dropless: every (token, choice) pair is computed, none is dropped for capacity. The pairs are
sorted by expert, so each expert's rows are contiguous, and each projection is one grouped
matmul over them (`jax.lax.ragged_dot` with the experts' row counts), then unsorted and summed
with the gates. On TPU and GPU a Pallas grouped-matmul kernel (tokamax's or MaxText's megablox
GMM) could replace `ragged_dot`: same operands, same result.

Logical axes: the expert kernels are [expert, embed, mlp] and [expert, mlp, embed]; the router
[embed, expert]. `rlhf_jax.sharding`'s rules map `expert` to a mesh axis; where that splits the
experts over devices, each device computes its own under `jax.shard_map` (`expert_parallel`).
"""

import math
from typing import NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from rlhf_jax import sharding
from rlhf_jax.models.config import ModelConfig

partitioned = nn.with_logical_partitioning


class Routing(NamedTuple):
  """One MoE layer's routing decision: what the load-balancing loss and router replay read."""
  logits: jax.Array  # [batch, time, n_experts] float32, the router's logits
  experts: jax.Array  # [batch, time, k] int32, each token's experts in the order of their gates


def route(logits: jax.Array, k: int, renormalise: bool, routed: Optional[jax.Array] = None):
  """Gates [..., k] (float32) and experts [..., k] from router logits [..., n_experts].

  probs = softmax(logits) in float32; experts = top_k(probs), or `routed` when given (router
  replay, R3: only the indices are replayed, the gates are the live probabilities of those
  experts, so the router still gets its gradient); gates = probs[experts], divided by their sum
  iff `renormalise`."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  if routed is None:
    gates, experts = jax.lax.top_k(probs, k)
  else:
    experts = routed.astype(jnp.int32)
    gates = jnp.take_along_axis(probs, experts, axis=-1)
  if renormalise:
    gates = gates / jnp.sum(gates, axis=-1, keepdims=True)
  return gates, experts


def grouped_experts(x: jax.Array, experts: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array,
                    first=0) -> jax.Array:
  """Each token through each of its experts, [n, k, d]: down(silu(gate x) * up x) of expert
  experts[t, j] for token x[t]. x: [n, d]; experts: [n, k]; gate, up: [E, d, f]; down: [E, f, d],
  the experts first .. first + E - 1 (a device's share under expert parallelism); pairs routed
  to any other expert give 0.

  The n * k pairs sorted (stably) by expert make one ragged_dot per projection, with
  `group_sizes` the experts' row counts: dropless, and no expert works on rows not its own."""
  n, k = experts.shape
  held = gate.shape[0]
  flat = experts.reshape(-1) - first
  flat = jnp.where((flat >= 0) & (flat < held), flat, held)  # other devices' experts sort last
  order = jnp.argsort(flat, stable=True)
  rows = x[order // k]  # pair p is token p // k's choice p % k
  sizes = jnp.bincount(flat, length=held).astype(jnp.int32)  # drops the pairs of experts not held
  hidden = nn.silu(jax.lax.ragged_dot(rows, gate, sizes)) * jax.lax.ragged_dot(rows, up, sizes)
  out = jax.lax.ragged_dot(hidden, down, sizes)
  # Rows past the last group are other devices' pairs: zeroed here rather than trusting every
  # backend's ragged_dot to leave them 0.
  out = jnp.where((jnp.arange(n * k) < jnp.sum(sizes))[:, None], out, 0)
  return jnp.zeros_like(out).at[order].set(out).reshape(n, k, -1)


def mixed_experts(x, experts, gates, gate, up, down, first=0) -> jax.Array:
  """sum_j gates[t, j] * (expert experts[t, j])(x[t]), [n, d]: `grouped_experts` weighed by the gates."""
  return jnp.einsum("nkd,nk->nd", grouped_experts(x, experts, gate, up, down, first), gates.astype(x.dtype))


def expert_parallel_plan(n_tokens: int, n_experts: int):
  """(mesh, token axes, expert axes, mlp axes) when the step being traced splits the experts
  over more than one device and `expert_parallel` can run there; else None (GSPMD's ragged_dot).

  Its all-gather of the tokens runs over the expert axes, so they must be axes the tokens are
  split over (the default rule: expert -> fsdp, batch -> (data, fsdp)); both splits must be even."""
  layout = sharding.current_layout()
  if layout is None:
    return None
  mesh, rules = layout
  tokens = sharding.axes_tuple(nn.logical_to_mesh_axes(("batch",), rules)[0])
  # Axes of one device dropped: a psum over them is an all-reduce that moves nothing, but it still runs.
  expert, _, mlp = (tuple(a for a in sharding.axes_tuple(axes) if mesh.shape[a] > 1)
                    for axes in nn.logical_to_mesh_axes(("expert", "embed", "mlp"), rules))
  ways = lambda axes: math.prod(mesh.shape[a] for a in axes)
  if ways(expert) == 1 or not set(expert) <= set(tokens) or set(mlp) & set(tokens):
    return None  # also when a rule splits the experts' hidden units over devices holding other tokens
  if n_tokens % ways(tokens) or n_experts % ways(expert):
    return None
  return mesh, tokens, expert, mlp


def expert_parallel(plan, x, experts, gates, gate, up, down) -> jax.Array:
  """`mixed_experts` under `jax.shard_map`, each device computing only its own experts.

  GSPMD's rule for ragged_dot replicates the expert (group) axis on GPU and TPU (XLA's Shardy
  rule marks it need_replication), which would all-gather every expert onto every device. Here
  each device all-gathers the tokens of its expert group (the devices along the expert axes,
  which together hold every expert), runs ragged_dot over the pairs routed to its own experts,
  and a reduce-scatter sums each token's experts back onto the device that holds the token
  (plus a psum where `mlp` splits f)."""
  mesh, tokens, expert, mlp = plan
  row, kernel = P(tokens), P(expert, None, mlp)

  def local(x, experts, gates, gate, up, down):
    x, experts, gates = (jax.lax.all_gather(a, expert, tiled=True) for a in (x, experts, gates))
    y = mixed_experts(x, experts, gates, gate, up, down, first=jax.lax.axis_index(expert) * gate.shape[0])
    y = jax.lax.psum_scatter(y, expert, tiled=True)
    return jax.lax.psum(y, mlp) if mlp else y

  specs = (row, row, row, kernel, kernel, P(expert, mlp, None))
  return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=row)(x, experts, gates, gate, up, down)


class MoeMlp(nn.Module):
  """The MLP of an MoE block: x [batch, time, d_model] -> (y [batch, time, d_model], Routing).

  `routed` [batch, time, k]: experts to use instead of the router's top k (router replay)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, routed=None):
    cfg = self.cfg
    e, d, f = cfg.n_experts, cfg.d_model, cfg.expert_dim
    x = x.astype(cfg.compute_dtype)
    router = self.param("router", partitioned(nn.initializers.normal(cfg.init_std), ("embed", "expert")), (d, e),
                        cfg.weight_dtype)
    logits = jnp.einsum("btd,de->bte", x, router.astype(cfg.compute_dtype)).astype(jnp.float32)
    gates, experts = route(logits, cfg.experts_per_token, cfg.norm_topk_prob, routed)
    kernel = lambda name, shape, axes, std: self.param(
        name, partitioned(nn.initializers.normal(std), axes), shape, cfg.weight_dtype).astype(cfg.compute_dtype)
    out_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5  # GPT-2's scaled residual init, as Mlp's down
    gate = kernel("gate", (e, d, f), ("expert", "embed", "mlp"), cfg.init_std)
    up = kernel("up", (e, d, f), ("expert", "embed", "mlp"), cfg.init_std)
    down = kernel("down", (e, f, d), ("expert", "mlp", "embed"), out_std)
    b, t, _ = x.shape
    flat = (x.reshape(b * t, d), experts.reshape(b * t, -1), gates.reshape(b * t, -1), gate, up, down)
    plan = expert_parallel_plan(b * t, e)
    y = mixed_experts(*flat) if plan is None else expert_parallel(plan, *flat)
    return y.reshape(b, t, d), Routing(logits, experts)


def load_balancing_loss(routing: Sequence[Routing], mask: Optional[jax.Array] = None) -> jax.Array:
  """The auxiliary load-balancing loss (Switch Transformer; Hugging Face's
  `load_balancing_loss_func`, which Qwen3-MoE and Mixtral train with), pooled over the layers:

    L = E * sum_e f_e * P_e,

  f_e the share of (layer, token) pairs routed to expert e (each token counts its k
  assignments, so sum_e f_e = k), P_e the mean router probability of e. Tokens where `mask`
  [batch, time] is 0 (padding) count in neither mean, as HF's with an attention mask. f_e
  counts the experts the tokens used (the replayed ones under router replay); only P_e has a
  gradient."""
  logits = jnp.stack([r.logits for r in routing])  # [layers, batch, time, E]
  experts = jnp.stack([r.experts for r in routing])
  n_experts = logits.shape[-1]
  weight = jnp.ones(logits.shape[1:3]) if mask is None else mask.astype(jnp.float32)
  weight = jnp.broadcast_to(weight, logits.shape[:3])[..., None]
  tokens = jnp.maximum(jnp.sum(weight), 1.0)
  assignments = jnp.sum(jax.nn.one_hot(experts, n_experts, dtype=jnp.float32), axis=-2)  # [layers, b, t, E]
  share = jnp.sum(assignments * weight, axis=(0, 1, 2)) / tokens
  probability = jnp.sum(jax.nn.softmax(logits.astype(jnp.float32), axis=-1) * weight, axis=(0, 1, 2)) / tokens
  return n_experts * jnp.sum(share * probability)


def router_aux_applies(cfg: ModelConfig) -> bool:
  """Whether training adds the load-balancing loss: an MoE model with router_aux_coef > 0 (Hugging
  Face's `output_router_logits`). Otherwise a step that would read the routing for it runs as a
  dense model's does, with no extra work."""
  return cfg.n_experts > 0 and cfg.router_aux_coef > 0


def aux_metrics(sums: dict) -> dict:
  """The `router_aux_loss` among a step's summed metrics, where an MoE model added one; else {}."""
  return {k: sums[k] for k in ("router_aux_loss",) if k in sums}


def with_router_aux(loss, metrics: dict, router: Optional[Sequence[Routing]], mask, coef: float, share=1.0):
  """`loss` plus `coef` times the load-balancing loss of `router` (a ModelOutput's; None for a
  dense model: unchanged), which `metrics` gets as `router_aux_loss`. Both scaled by `share`, a
  microbatch's part of the batch, so their sums over the microbatches are the batch's means."""
  return with_aux_loss(loss, metrics, None if router is None else load_balancing_loss(router, mask), coef, share)


def with_aux_loss(loss, metrics: dict, aux: Optional[jax.Array], coef: float, share=1.0):
  """`with_router_aux` of a load-balancing loss already computed (`aux`; None: unchanged): the
  RL loss reads it from the policy's outputs, computed where the forward pass ran."""
  if aux is None:
    return loss, metrics
  aux = share * aux
  return loss + coef * aux, {**metrics, "router_aux_loss": aux}


def stack_experts(router: Sequence[Routing]) -> jax.Array:
  """Each token's experts in every layer, [batch, layers, time, k] int32: what the sampler
  records for router replay. Batch first, so whatever selects, shuffles or splits rows (groups
  kept, minibatches, microbatches, seeds) applies to it as to the tokens."""
  return jnp.stack([r.experts for r in router], axis=1)


def replayed(experts: jax.Array) -> jax.Array:
  """Recorded experts [batch, layers, time, k] as `Transformer`'s `routed`: [layers, batch, time, k]."""
  return jnp.moveaxis(experts, 1, 0)


def routing_agreement(router: Sequence[Routing], recorded: jax.Array) -> jax.Array:
  """[batch, time]: the share of each token's (layer, choice) assignments in which the router's
  live top k (from its logits, so the same under replay) holds an expert of the `recorded` ones
  [batch, layers, time, k] (compared as sets: the order of the gates does not matter). 1 where
  the two passes route alike."""
  k = recorded.shape[-1]
  live = jnp.stack([route(r.logits, k, renormalise=False)[1] for r in router], axis=1)
  hits = jnp.any(live[..., :, None] == recorded[..., None, :], axis=-1)
  return jnp.mean(hits.astype(jnp.float32), axis=(1, 3))
