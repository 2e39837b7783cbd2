"""Shared test helpers: a small model config and a tiny, fast stage config."""

import contextlib
import os
import tempfile

import filelock
import pytest

# Triton (torch's, vLLM's) and TensorFlow (the tfds tests) each register LLVM's command-line
# options; whichever loads second aborts the process ("LLVM ERROR: inconsistency in registered
# CommandLine options") if it is Triton. An xdist worker that ran a tfds test and then imported
# transformers (torch._dynamo -> triton) crashed so. Loaded first, Triton is fine (0.1 s).
with contextlib.suppress(ImportError):
  import triton  # pylint: disable=g-import-not-at-top,unused-import

# One XLA compilation cache for the whole session, the tests' child processes included: the
# tiny configs compile the same programs many times over (a run, its killed twin, its resume;
# each xdist worker's upstream). A cached executable is the one a fresh compile would give.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "rlhf_jax_tests_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The tests compile hundreds of small programs and run each for milliseconds, so compiling is
# most of their time: LLVM at -O0 takes about a third off it (test_rl_steps: 232 -> 158 s of
# test time from a cold cache). The programs are the same HLO; only the machine code differs,
# which moves float results by rounding (a ratio of 1 came out 1 +- 4e-6), never more. The
# child processes inherit it; a child given more devices appends to it (`xla_flags`).
FAST_COMPILE = "--xla_backend_optimization_level=0"
if FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):  # xdist workers inherit the session's
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a child process with `devices` simulated CPU devices."""
  return f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}"

from configs import pretrain, sft
from rlhf_jax.models.config import ModelConfig

GPT2 = dict(position="learned", norm="layernorm", mlp="gelu", bias="all", tie_embeddings=True)
LLAMA = dict(position="rope", norm="rmsnorm", mlp="swiglu", bias="none", tie_embeddings=False, n_kv_heads=2)
# Gemma 3's block, its first layer sliding with a window of 4 tokens (shorter than the tests' rows)
GEMMA3 = dict(position="rope", norm="gemma_rmsnorm", mlp="geglu", bias="none", tie_embeddings=True, n_kv_heads=2,
              qk_norm=True, post_norms=True, embed_scale=True, query_pre_attn_scalar=24, rope_theta=1e6,
              rope_local_theta=1e4, layer_types=("sliding_attention", "full_attention"), sliding_window=4)


def small_model(**overrides) -> ModelConfig:
  values = dict(vocab_size=259, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_len=64, **GPT2)
  values.update(overrides)
  return ModelConfig(**values)


def shrink(config, steps=20):
  """A stage config small enough to train in seconds on 2 CPU cores."""
  config.model.update(dict(d_model=64, n_layers=2, n_heads=4, d_ff=128, max_len=64))
  config.data.update(dict(seq_len=64, batch_size=8, embedded_docs=400, eval_docs=40))
  config.train.update(dict(num_steps=steps, log_every=5, eval_every=steps // 2, checkpoint_every=steps // 2,
                           eval_batches=2))
  config.optim.warmup_steps = 5
  config.sample.update(dict(num_prompts=4, max_new_tokens=16))
  return config


@pytest.fixture
def tiny_pretrain():
  return shrink(pretrain.get_config("tiny"))


def make_tiny_sft():
  config = shrink(sft.get_config("tiny"), steps=10)
  shrink(config.upstream.pretrain)
  return config


def make_tiny_reward():
  from configs import reward  # pylint: disable=g-import-not-at-top
  config = shrink(reward.get_config("tiny"), steps=10)
  config.upstream.sft = make_tiny_sft()
  config.preference.update(dict(train_pairs=64, eval_pairs=16, max_new_tokens=24, gen_batch=32))
  config.train.eval_batches = 2
  return config


def make_tiny_ppo():
  from configs import ppo  # pylint: disable=g-import-not-at-top
  config = shrink(ppo.get_config("tiny"), steps=4)
  config.train.log_every = 1
  config.upstream.reward = make_tiny_reward()
  config.data.batch_size = 8
  config.update(dict(eval_prompts=8, max_prompt_len=24))
  config.sample.max_new_tokens = 16
  return config


@pytest.fixture
def tiny_sft():
  return make_tiny_sft()


@pytest.fixture
def tiny_reward():
  return make_tiny_reward()


@pytest.fixture
def tiny_ppo():
  return make_tiny_ppo()


@pytest.fixture(scope="session")
def tiny_upstream(tmp_path_factory):
  """One finished shrunk pretrain -> SFT -> reward chain for the whole session (the first
  xdist worker to need it builds it; the others wait, then reuse it), for tests of later
  stages that start from it (init_from / reward_from) rather than test running it."""
  from rlhf_jax import stages  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.getbasetemp()
  root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared_upstream"
  with filelock.FileLock(f"{root}.lock"):
    stages.run(make_tiny_reward(), str(root / "reward"))  # a finished run is not redone
  return {"init_from": str(root / "reward" / "upstream" / "sft"), "reward_from": str(root / "reward")}


class Crash(Exception):
  """Stands in for a run killed mid-way (the real kills are the fault suite's job)."""


class Started(Exception):
  """Raised by `start_of` once a stage's loop is handed its starting state."""


def start_of(run, monkeypatch, stop: bool = True):
  """Runs `run()` (a stage) up to its host loop and returns (loop, host copy of the state the
  loop starts from): what the stage built, loaded and restored, before any step. With
  stop=False the run then trains on (its result is dropped)."""
  from rlhf_jax.training.core.loop import Loop  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  original, seen = Loop.train, []

  def train(self, state):
    seen.append((self, jax.device_get(state)))  # a copy: the first step donates the state
    if stop:
      raise Started()
    return original(self, state)

  monkeypatch.setattr(Loop, "train", train)
  try:
    if stop:
      with pytest.raises(Started):
        run()
    else:
      run()
  finally:
    monkeypatch.setattr(Loop, "train", original)
  return seen[0]


def final_params(run_dir, item: str = "params"):
  """The newest checkpoint's `item` of a finished run, read by orbax alone (no model, no
  rlhf_jax restore code), as numpy arrays."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = os.path.join(run_dir, "checkpoints")
  step = max(int(name) for name in os.listdir(directory) if name.isdigit())
  return ocp.StandardCheckpointer().restore(os.path.join(directory, str(step), item))


def run_until_crash(run, monkeypatch, step: int) -> None:
  """Calls run() with the metrics log raising Crash when it reaches `step`, then restores it."""
  from rlhf_jax.metrics_log import MetricsLog  # pylint: disable=g-import-not-at-top
  original = MetricsLog.write

  def crash(self, at, metrics):
    if at == step:
      raise Crash()
    original(self, at, metrics)

  monkeypatch.setattr(MetricsLog, "write", crash)
  try:
    with pytest.raises(Crash):
      run()
  finally:
    monkeypatch.setattr(MetricsLog, "write", original)


@pytest.fixture
def tiny_dpo():
  from configs import dpo  # pylint: disable=g-import-not-at-top
  config = shrink(dpo.get_config("tiny"), steps=4)
  config.upstream.reward = make_tiny_reward()
  config.update(dict(eval_prompts=8, max_prompt_len=24))
  config.sample.max_new_tokens = 16
  return config


# The longest tests (each a minute or more on 2 cores: processes of their own, or a whole run
# killed and resumed), started first so that the other worker runs the short ones beside them
# rather than one core finishing a long test alone at the end.
LONGEST_FIRST = ("tests/test_distributed.py::test_two_processes", "tests/test_sharding.py::test_steps_match",
                 "tests/test_faults.py::test_rl_and_dpo_killed", "tests/training/rl/test_rl_trainer.py::test_vmapped",
                 "tests/training/test_lora_stages.py::test_lora_ppo", "tests/test_faults.py::test_pretraining_killed")


def pytest_collection_modifyitems(items):
  rank = lambda item: next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)),
                           len(LONGEST_FIRST))
  items.sort(key=rank)  # stable: the rest keep their order
