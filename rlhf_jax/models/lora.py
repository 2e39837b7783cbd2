"""LoRA (Hu et al. 2021): W' = W + (alpha / r) A B, with A [in, r] random and B [r, out] zero, so
an adapted model starts equal to its base and only A, B (and the scalar heads) train.

Adapters live in the params beside the kernel they adapt (`.../query/lora_a`, `lora_b`), laid
out by the kernel's own logical axes (A: its input axes, B: its output axes; the rank axis is
never split). A model applies an adapter only when its params hold one, so the params without
adapters and heads (`split`'s base) are the base model itself: the RL reference with LoRA is
the frozen base, held once. Trainable part and base recombine with `combine`; `merge` folds the
adapters into the kernels (export, and a later stage starting from a LoRA run).
"""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

ADAPTER = ("lora_a", "lora_b")


def scale(cfg) -> float:
  return cfg.lora_alpha / cfg.lora_rank


def adapter_params(module: nn.Module, cfg, name: str, in_shape: tuple, in_axes: tuple, out_shape: tuple,
                   out_axes: tuple):
  """(A, B) of projection `name` inside `module`, or None: made at init when LoRA targets `name`,
  used whenever the params hold them. A is PEFT's Kaiming-uniform (bound 1 / sqrt(fan_in)), B zero."""
  if not cfg.lora_rank or name not in cfg.lora_targets:
    return None
  if not (module.is_initializing() or module.has_variable("params", "lora_a")):
    return None  # the base: adapters off
  in_dims = tuple(range(len(in_shape)))
  init_a = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=in_dims, out_axis=-1)
  a = module.param("lora_a", nn.with_logical_partitioning(init_a, (*in_axes, None)), (*in_shape, cfg.lora_rank),
                   cfg.weight_dtype)
  b = module.param("lora_b", nn.with_logical_partitioning(nn.initializers.zeros, (None, *out_axes)),
                   (cfg.lora_rank, *out_shape), cfg.weight_dtype)
  return a, b


def delta(x, adapter, cfg, in_dims: int = 1):
  """scale * (x A) B: x's last `in_dims` axes against A's input axes; [.., r] then B's output axes."""
  a, b = (w.astype(cfg.compute_dtype) for w in adapter)
  low = jax.lax.dot_general(x, a, ((tuple(range(x.ndim - in_dims, x.ndim)), tuple(range(in_dims))), ((), ())))
  out = jax.lax.dot_general(low, b, (((low.ndim - 1,), (0,)), ((), ())))
  return (scale(cfg) * out).astype(cfg.compute_dtype)


def is_trainable(path: tuple) -> bool:
  """With LoRA, the adapters and the scalar heads (reward, value) train; everything else is the base."""
  return path[-1] in ADAPTER or path[0].endswith("_head") and path[0] != "lm_head"


def split(params) -> tuple:
  """(trainable, base): the adapters and scalar heads, and the rest, as two nested dicts."""
  flat = flax.traverse_util.flatten_dict(params)
  trainable = {k: v for k, v in flat.items() if is_trainable(k)}
  base = {k: v for k, v in flat.items() if not is_trainable(k)}
  return flax.traverse_util.unflatten_dict(trainable), flax.traverse_util.unflatten_dict(base)


def combine(base, trainable):
  """The params of the adapted model: `base` with `trainable`'s entries added (None: no base)."""
  if base is None:
    return trainable
  return flax.traverse_util.unflatten_dict({**flax.traverse_util.flatten_dict(base),
                                            **flax.traverse_util.flatten_dict(trainable)})


def on_base(loss_fn, base):
  """`loss_fn(params, ...)` as a function of what trains: its params on the frozen `base` (None: itself)."""
  return loss_fn if base is None else lambda params, *args: loss_fn(combine(base, params), *args)


def has_adapters(params) -> bool:
  return any(k[-1] in ADAPTER for k in flax.traverse_util.flatten_dict(params))


def merge(params, cfg):
  """Plain params: every kernel with its adapter folded in, W + scale A B (in float32), adapters gone."""
  flat = flax.traverse_util.flatten_dict(params)
  out = {k: v for k, v in flat.items() if k[-1] not in ADAPTER}
  for key in [k for k in flat if k[-1] == "lora_a"]:
    module = key[:-1]
    a, b = flat[key], flat[(*module, "lora_b")]
    kernel = out[(*module, "kernel")]
    update = jnp.tensordot(a.astype(jnp.float32), b.astype(jnp.float32), axes=1) * scale(cfg)
    out[(*module, "kernel")] = (kernel.astype(jnp.float32) + update).astype(kernel.dtype)
  return flax.traverse_util.unflatten_dict(out)


def num_params(cfg) -> int:
  """Adapter parameters of `cfg`'s model: r (in + out) per adapted projection and layer."""
  d, h, kv, hd, f = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head, cfg.d_ff
  sizes = {"query": (d, h * hd), "key": (d, kv * hd), "value": (d, kv * hd), "out": (h * hd, d),
           "gate": (d, f), "up": (d, f), "down": (f, d)}
  targets = [t for t in cfg.lora_targets if t != "gate" or cfg.gated_mlp]
  return cfg.n_layers * cfg.lora_rank * sum(sum(sizes[t]) for t in targets) if cfg.lora_rank else 0
