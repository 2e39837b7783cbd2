"""Pieces shared by every stage's config: model presets, data, optimiser, logging, mesh.

Configs are Python: `configs/STAGE.py:PRESET` calls `get_config(PRESET)`; any field can be
overridden on the command line (`--config.optim.lr=3e-4`). Unknown fields are an error.
"""

import ml_collections

from rlhf_jax.models.config import LORA_TARGETS

# GPT-2-style and Llama-style blocks differ only in these switches (see ModelConfig).
GPT2_BLOCK = dict(position="learned", norm="layernorm", mlp="gelu", bias="all", tie_embeddings=True)
LLAMA_BLOCK = dict(position="rope", norm="rmsnorm", mlp="swiglu", bias="none", tie_embeddings=False)

MODELS = {
    # 4 layers, d_model 128: learns the embedded corpus in minutes on 2 CPU cores. A GPT-2
    # block with rotary positions: with learned positions this model sits on a bigram plateau
    # (loss ~2.2) for ~150 of 300 steps; rotary leaves it within 75 (eval loss 0.43 vs 1.2 at 300).
    "tiny": dict(GPT2_BLOCK, position="rope", vocab_size=0, d_model=128, n_layers=4, n_heads=4, d_ff=512,
                 max_len=128),
    "llama_tiny": dict(LLAMA_BLOCK, vocab_size=0, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
                       d_ff=384, max_len=128),
    # GPT-2 small's shape (124M with vocab 50304 = 50257 rounded up for the accelerator's tiles).
    "gpt2_small": dict(GPT2_BLOCK, vocab_size=50304, d_model=768, n_layers=12, n_heads=12, d_ff=3072,
                       max_len=1024, dtype="bfloat16"),
    # A 1.1B Llama-style model (TinyLlama's shape: GQA with 4 KV heads, SwiGLU, RMSNorm, rope). Its
    # losses read the LM head 128 positions at a time (models/head.py): the backward pass recomputes
    # the head, 6% of this model's weights (31% of GPT-2 small's, which holds its logits at once).
    "llama_1b": dict(LLAMA_BLOCK, vocab_size=32000, d_model=2048, n_layers=22, n_heads=32, n_kv_heads=4,
                     d_ff=5632, max_len=2048, dtype="bfloat16", logits_chunk=128),
    # Mixture of experts (models/moe.py): llama_tiny with Qwen3's qk_norm (it exports as Qwen3-MoE)
    # and 4 experts of 192 in each block, 2 per token (llama_tiny's 384 active); the load-balancing
    # loss at Switch Transformer's 0.01.
    "tiny_moe": dict(LLAMA_BLOCK, vocab_size=0, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=384,
                     max_len=128, qk_norm=True, n_experts=4, experts_per_token=2, d_expert=192, router_aux_coef=0.01),
}
# Presets that train on a laptop CPU; the others are sized for accelerators.
SMALL_PRESETS = ("tiny", "llama_tiny", "tiny_moe")


def is_small(preset: str) -> bool:
  return preset in SMALL_PRESETS


def model_config(preset: str) -> ml_collections.ConfigDict:
  """vocab_size 0 means: the tokenizer's vocabulary, rounded up to a multiple of 128."""
  base = dict(n_kv_heads=0, head_dim=0, rope_theta=10000.0, qk_norm=False, norm_eps=1e-5, dtype="float32",
              param_dtype="float32", remat=False, attention="auto", logits_chunk=0, dropout=0.0, init_std=0.02,
              heads=(), n_experts=0, experts_per_token=2, d_expert=0, norm_topk_prob=True, router_aux_coef=0.0)
  return ml_collections.ConfigDict({**base, **MODELS[preset]})


def base_config(stage: str, preset: str) -> ml_collections.ConfigDict:
  """Everything a training stage reads; stage files adjust the fields that differ."""
  if preset not in MODELS:
    raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(MODELS)}")
  small = is_small(preset)
  c = ml_collections.ConfigDict()
  c.stage = stage
  c.seed = 0
  c.init_from = ""  # a finished run's workdir to start from; "" = random init (or the upstream stage)
  # Files (PATH.py) or modules imported before the run's checks, registering their own methods
  # (rlhf_jax/plugins.py, docs/extending.md): --config.plugins="('my_methods.py',)".
  c.plugins = ()
  c.model = model_config(preset)
  # A 1024-piece BPE on the embedded corpus gives ~44 tokens per review (bytes: ~167), so every
  # stage of the tiny pipeline runs on sequences ~4x shorter; it trains in memory in ~0.2 s.
  c.tokenizer = ml_collections.ConfigDict(dict(kind="sentencepiece", vocab_size=1024 if small else 32000,
                                               train_docs=20000))
  c.data = ml_collections.ConfigDict(dict(
      source="embedded", text_field="text", embedded_docs=20000, eval_docs=500, seed=0,
      eval_fraction=0.05, train_split="train", eval_split="test", tfds_data_dir="",
      # 128 tokens hold a whole embedded review (at most ~80), so SFT sees every response end with EOS.
      seq_len=128 if small else 1024, batch_size=16 if small else 64,
      # Several sequences per row, attention confined to each and its positions restarting:
      # pretraining (each document its own segment), SFT (as many sequences as fit), reward
      # and DPO (whole pairs in rows of 2 * seq_len; held-out pairs stay one per row).
      pack=False,
      # With pack, reward and DPO: each pair's prompt held once, its rejected response attending
      # to the chosen one's copy (exact; fewer tokens per pair, the more so the longer the prompts).
      share_prompt=False,
      prompt_words_min=2, prompt_words_max=6,
      # Prompt records (RL; SFT's prompts too): the prompt is the `prompt_field` field, or
      # `prompt_template` (a format string over the fields, "Question: {question}\nAnswer:")
      # filled from them; the other fields are the reward functions' columns. eval_source: the
      # held-out records' own source ("": a held-out slice of `source`).
      prompt_field="prompt", prompt_template="", eval_source="",
      # With a template and truncate_tokens > 0, a prompt over that many tokens has its
      # truncate_field cut at its last truncate_text, then by characters, until it fits (Huang
      # et al. 2024's TL;DR queries: the post cut at a newline, subreddit and title kept).
      truncate_field="", truncate_text="\n", truncate_tokens=0,
      # SFT records: the response is the `response_field` field; or with `messages_field` a
      # column of chat messages, the last (the assistant's) the response and those before it
      # the prompt (rendered by the chat template with chat_template, else as HH's text).
      response_field="response", messages_field="",
      # reasoning_gym:NAME: the task's own settings as JSON ('{"min_terms": 2}'); its counts are
      # embedded_docs (training) and eval_docs (held out).
      reasoning_gym_options="",
      # embedded:arithmetic: the operands' digits; the operations asked ("+", "-", "*"); the
      # fraction of training solutions that forget a carry or borrow (data/arithmetic.py;
      # held-out problems are asked, never shown).
      arithmetic_digits=2, arithmetic_operations=("+", "-", "*"), arithmetic_slips=0.0,
      chat_template=False))  # True: the prompt as a user message in an HF tokenizer's chat template
  c.optim = ml_collections.ConfigDict(dict(
      # A linear warmup, then a `schedule` decay (cosine or linear) to lr x final_lr_ratio.
      lr=3e-3 if small else 6e-4, warmup_steps=50 if small else 1000, final_lr_ratio=0.1, schedule="cosine",
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0, accum_steps=1))
  c.train = ml_collections.ConfigDict(dict(
      num_steps=250 if small else 20000, log_every=25 if small else 100,
      eval_every=125 if small else 2000, eval_batches=8 if small else 20,
      checkpoint_every=125 if small else 2000, keep_checkpoints=2,
      # An update whose loss, gradients or rewards are not finite is never applied; then
      # "stop" checkpoints and exits with an error naming the step, "skip" goes on (counted).
      # inject_nan_at: fault injection (tests): at these steps the loss (RL: rewards) is NaN.
      on_nonfinite="stop", inject_nan_at=(),
      # A run that failed (status.json: a refused update, a reward function that raised) fails
      # again on a rerun with its cause; True resumes it from its last checkpoint instead.
      resume_failed=False))
  c.sample = ml_collections.ConfigDict(dict(
      num_prompts=8, max_new_tokens=96 if small else 256, temperature=0.7, top_k=0, top_p=1.0,
      greedy=False,
      # "continuous": `slots` rows decode at a time, a finished row's slot taking the next prompt
      # (0: a quarter of the rows); the same tokens as "static" (models/continuous.py). "paged":
      # the same over a paged KV cache (models/paged.py) of cache_blocks blocks of block_size
      # tokens (0: half of every slot's whole length), attention over its pages by "xla" or
      # "pallas" (JAX's Pallas paged-attention kernel, GPU or TPU).
      batching="static", slots=0, cache_blocks=0, block_size=16, paged_attention="xla"))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding_rules = DEFAULT_RULES
  c.distributed = distributed_config()
  # The memory plan is printed before compiling; a run over `device_gb` (0: ask the device;
  # unknown on CPU) stops there.
  c.memory = ml_collections.ConfigDict(dict(device_gb=0.0))
  # Weights & Biases beside TensorBoard (rlhf_jax/tracking.py), when a project is named: each run
  # is named by its directory and grouped by its parent's (a sweep's root, a pipeline's workdir);
  # wandb_mode "" is W&B's own choice (WANDB_MODE), "offline" writes locally for `wandb sync`.
  c.log = ml_collections.ConfigDict(dict(wandb_project="", wandb_entity="", wandb_mode=""))
  c.lora = lora_config()
  return c


def lora_config() -> ml_collections.ConfigDict:
  """LoRA adapters (Hu et al. 2021; rlhf_jax/models/lora.py) instead of full fine-tuning.

  rank 0 trains every weight. rank r > 0 freezes the weights the stage starts from and trains
  adapters of rank r on the `targets` projections (query, key, value, out; the MLP's gate, up,
  down), scaled by alpha / r, plus the scalar heads. The frozen base is held once: the RL and
  DPO reference is the base with the adapters off. Checkpoints hold the adapters and heads.
  A later stage starts from the merged weights, or with continue_adapters from the adapters.
  alpha 64 (scale 8 at rank 8): at the tiny RL preset's lr, alpha 16 moved gold 0.128 -> 0.286
  in 20 PPO iterations, alpha 64 to 0.608 (full fine-tuning: docs/huggingface_and_lora.md).
  """
  return ml_collections.ConfigDict(dict(rank=0, alpha=64.0, targets=LORA_TARGETS, continue_adapters=False))


def distributed_config() -> ml_collections.ConfigDict:
  """Multi-host runs through `jax.distributed.initialize` (see rlhf_jax/distributed.py).

  auto: JAX's own cluster detection (Cloud TPU pod slices, SLURM, Open MPI, Kubernetes).
  Otherwise a coordinator ("host:port" of process 0, or $JAX_COORDINATOR_ADDRESS) makes this
  one of `num_processes` ($JAX_NUM_PROCESSES) processes with id `process_id` ($JAX_PROCESS_ID);
  with neither, the run is one process.
  cpu_devices: a CPU-only host split into this many JAX devices (0: one), so that the data
  axis spreads rows over the cores; one per core is fastest for small models (benchmarks/).
  """
  return ml_collections.ConfigDict(dict(auto=False, coordinator="", num_processes=0, process_id=-1,
                                        cpu_devices=0))


# Logical axis -> mesh axes. Models name only logical axes; this table is the one place
# that says how they are laid out on a mesh.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    # An MoE layer's experts (models/moe.py) split over fsdp: expert parallelism over the devices
    # that already split the batch, as DeepSpeed-MoE and GShard lay it out, with no mesh axis of
    # its own (a fourth axis would change every mesh config and Mesh built here). Before `embed`,
    # so an expert kernel [expert, embed, mlp] gives fsdp to its experts (flax assigns a mesh axis
    # once per array, by the rules' order); override with ("expert", None) to replicate them.
    ("expert", "fsdp"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("positions", None),
)
