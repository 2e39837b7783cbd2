"""Timing, and the machine's limits measured in the same run: matmul peak, memory bandwidth,
the decode roofline and model FLOPs utilisation."""

import statistics
import time

import jax
import jax.numpy as jnp

from rlhf_jax import flops

# Dense bf16 tensor-core peaks from the datasheets, for MFU (the convention llm.c and PaLM use).
DATASHEET_BF16 = {"H100 80GB HBM3": 989e12, "H100 SXM": 989e12, "H200": 989e12, "H100 PCIe": 756e12,
                  "A100": 312e12}


def timed(fn, repeats: int) -> tuple[float, float]:
  """(seconds of the first call, compilation included; median seconds of `repeats` more)."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


def on_cpu() -> bool:
  return jax.devices()[0].platform == "cpu"


def matmul_peak(repeats: int = 10) -> dict:
  """FLOP/s of a large square matmul in the dtype the workloads compute in (f32 on CPU,
  bf16 on accelerators), on random data."""
  n, dtype = (2048, jnp.float32) if on_cpu() else (8192, jnp.bfloat16)
  a, b = (jax.random.normal(jax.random.key(i), (n, n), dtype) for i in range(2))
  matmul = jax.jit(jnp.matmul)
  seconds = timed(lambda: matmul(a, b), repeats)[1]
  return {"peak_flops_per_s": 2 * n ** 3 / seconds, "peak_matmul": f"{n}x{n}x{n} {jnp.dtype(dtype).name}"}


def bandwidth(repeats: int = 10) -> float:
  """Bytes/s of an elementwise pass over a large array, counting bytes read and written."""
  size = (64 if on_cpu() else 1024) * 2 ** 20
  x = jax.random.normal(jax.random.key(0), (size // 4,), jnp.float32)
  add_one = jax.jit(lambda v: v + 1.0)
  seconds = timed(lambda: add_one(x), repeats)[1]
  return 2 * size / seconds


def decode_roofline(cfg, info: dict, seconds: float) -> dict:
  """The fewest bytes decoding must move per step (weights in the compute dtype, and the keys
  and values of the tokens so far), over the measured bandwidth: the fastest possible time."""
  itemsize = jnp.dtype(cfg.compute_dtype).itemsize
  weights = flops.matmul_weights(cfg) * itemsize
  kv_per_token = 2 * cfg.n_layers * cfg.kv_heads * cfg.dim_per_head * itemsize * info["rows"]
  contexts = range(info["prompt_len"], info["prompt_len"] + info["new_tokens"])
  total = sum(weights + kv_per_token * context for context in contexts)
  rate = bandwidth()
  floor = total / rate
  return {"bandwidth_gb_per_s": rate / 1e9, "roofline_s": floor,
          "roofline_tokens_per_s": info["generated_tokens"] / floor, "fraction_of_roofline": floor / seconds}


def rollout_floor_bytes(cfg, lengths: list[int], prompt_len: int, slots: int) -> float:
  """The fewest bytes a sampler decoding `slots` rows a step must move to draw responses of
  these lengths: the weights once a step, for no fewer steps than the longest response nor than
  the tokens over the slots, and each token's context of keys and values once."""
  itemsize = jnp.dtype(cfg.compute_dtype).itemsize
  steps = max(max(lengths), -(-sum(lengths) // slots))
  kv_per_token = 2 * cfg.n_layers * cfg.kv_heads * cfg.dim_per_head * itemsize
  contexts = sum(n * prompt_len + n * (n - 1) // 2 for n in lengths)
  return steps * flops.matmul_weights(cfg) * itemsize + kv_per_token * contexts


def model_flops_utilisation(flops_per_s: float) -> dict:
  kind = jax.devices()[0].device_kind
  peak = next((v for k, v in DATASHEET_BF16.items() if k in kind), None)
  return {"mfu_datasheet": flops_per_s / peak, "datasheet_peak": peak} if peak else {}


PEER_LABELS = {"trl": "TRL", "tunix": "Tunix"}


def table(results: list, peer: str = "trl") -> str:
  """A markdown table of the figures (with the peer's, from its `{peer}_*` keys, where measured)."""
  label = PEER_LABELS.get(peer, peer)
  lines = [f"| workload | ours (s) | {label} (s) | speedup | ours % of peak | {label} % of peak |",
           "|---|---|---|---|---|---|"]
  for r in results:
    theirs = r.get(f"{peer}_seconds")
    cells = [r["workload"], f"{r['seconds']:.4g}", f"{theirs:.4g}" if theirs else "-",
             f"{r[f'speedup_vs_{peer}']:.2f}x" if theirs else "-", f"{100 * r['fraction_of_peak']:.0f}%",
             f"{100 * r[f'{peer}_fraction_of_peak']:.0f}%" if theirs else "-"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)
