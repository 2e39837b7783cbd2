"""vLLM as the rollout engine (rollout.engine=vllm): a tiny model of ours exported, sampled by
vLLM's CPU build in this process, trained a few iterations, its weights pushed after each update:
the sampler/trainer log-prob gap stays at float32's error after every push, LoRA's merged
weights included and vmapped seeds' policies pushed in turn, and off-policy the queue takes the
engine's rollouts."""

import json
import multiprocessing
import os
import shutil
import signal

import jax
import numpy as np
import pytest

from rlhf_jax import preemption, rl_plan, stages
from rlhf_jax.errors import Preempted, UserError
from rlhf_jax.interop import vllm_engine, vllm_process
from rlhf_jax.training.rl import engine_rollout, rl_trainer

needs_vllm = pytest.mark.skipif(not vllm_engine.available(), reason="vLLM is not installed (pip install -e '.[vllm]')")


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
  """A shrunk pretrain -> SFT chain whose heads are 32 wide (vLLM's CPU attention needs it)."""
  from tests.conftest import make_tiny_sft  # pylint: disable=g-import-not-at-top
  cfg = make_tiny_sft()
  for stage in (cfg, cfg.upstream.pretrain):
    stage.model.n_heads = 2
  directory = tmp_path_factory.mktemp("vllm_upstream") / "sft"
  stages.run(cfg, str(directory))
  return str(directory)


def engine_config(sft_run, **rl):
  from tests.conftest import make_tiny_ppo  # pylint: disable=g-import-not-at-top
  cfg = make_tiny_ppo()
  cfg.init_from, cfg.algo, cfg.reward.fns = sft_run, "grpo", ("length",)
  cfg.rollout.engine = "vllm"
  cfg.train.update(dict(num_steps=3, eval_every=3, checkpoint_every=3, log_every=1))
  cfg.optim.update(dict(lr=1e-3, warmup_steps=0))
  cfg.rl.update(rl)
  return cfg


def lora_config(sft_run):
  cfg = engine_config(sft_run)
  cfg.lora.rank = 4  # the pushed weights are the adapters merged into the base
  # Each document cut after 4 words, whatever the seed: vmapped seeds share seed 0's prompts, and
  # so does a single-seed run with seed 1 then (by default the seed picks where each is cut).
  cfg.data.update(dict(prompt_words_min=4, prompt_words_max=4))
  return cfg


def train_rows(run_dir) -> list:
  return [row for row in map(json.loads, open(run_dir / "metrics.jsonl")) if "rollout/logprob_gap_max" in row]


@pytest.fixture(scope="module")
def lora_run(sft_run, tmp_path_factory):
  """On-policy GRPO with LoRA sampled by vLLM in this process: (its summary, its iterations' metrics)."""
  cfg = lora_config(sft_run)
  assert rl_plan.resolve(cfg).driver == "host"
  directory = tmp_path_factory.mktemp("vllm_lora") / "run"
  return stages.run(cfg, str(directory)), train_rows(directory)


@needs_vllm
def test_vllm_samples_each_iteration_with_the_pushed_lora_merged_weights_and_the_gap_stays_at_float_error(
    lora_run):
  summary, rows = lora_run
  assert len(rows) == 3 and all(row["rollout/logprob_gap_max"] < 1e-4 for row in rows), rows
  assert all(row["time/weight_push"] > 0 and row["rollout/weight_push_mb"] > 0 for row in rows)
  assert all(row["rollout/ess"] > 0.999 for row in rows)
  # The policy moved (its KL to the reference is not 0): the last push was of new weights.
  assert rows[-1]["kl"] != 0 and np.isfinite(summary["eval/proxy_reward"])


@needs_vllm
def test_off_policy_queues_the_engines_rollouts_checked_under_the_weights_that_drew_them(sft_run, tmp_path):
  cfg = engine_config(sft_run, off_policy_steps=1, rollout_correction="token_tis")
  assert rl_plan.resolve(cfg).driver == "off_policy"
  stages.run(cfg, str(tmp_path / "run"))
  rows = train_rows(tmp_path / "run")
  assert len(rows) == 3 and all(row["rl/staleness"] < 1e-4 for row in rows)
  # One step stale: the trainer's log-probs moved from the sampler's after the first update.
  assert rows[0]["rollout/logprob_gap_max"] < 1e-4 and rows[-1]["rollout/logprob_gap_max"] > 1e-4
  assert all(0 <= row["rollout/corrected_fraction"] <= 1 for row in rows)


@needs_vllm
def test_vmapped_seeds_push_each_seeds_policy_before_its_rollout_and_draw_what_single_seed_runs_draw(
    sft_run, lora_run, tmp_path):
  """Seed i of a vmapped run samples as a single-seed run with seed cfg.seed + i does (its policy
  pushed, its per-response seeds): the same responses, so the same lengths, EOS fractions and KL.
  Seed 0's single run is `lora_run`'s; seed 1's runs here."""
  cfg = lora_config(sft_run)
  cfg.vmap_seeds = 2
  stages.run(cfg.copy_and_resolve_references(), str(tmp_path / "vmapped"))
  seeds = [train_rows(tmp_path / "vmapped" / f"seed_{cfg.seed + i}") for i in range(2)]
  cfg.vmap_seeds, cfg.seed = 1, cfg.seed + 1
  stages.run(cfg, str(tmp_path / "seed_1"))
  singles = [lora_run[1], train_rows(tmp_path / "seed_1")]
  for rows, single in zip(seeds, singles, strict=True):
    # After every push the engine's log-probs are the trainer's: each seed's policy landed before its rollout.
    assert len(rows) == 3 and all(row["rollout/logprob_gap_max"] < 1e-4 for row in rows), rows
    for mine, theirs in zip(rows, single, strict=True):
      same = ("response_length", "no_eos_fraction")
      assert [mine[k] for k in same] == [theirs[k] for k in same]
      assert mine["kl"] == pytest.approx(theirs["kl"], rel=1e-3, abs=1e-6)
      # One push per seed per iteration: the engine's metrics are the iteration's, summed over the seeds.
      assert mine["rollout/weight_push_mb"] == pytest.approx(2 * theirs["rollout/weight_push_mb"])
  assert [row["response_length"] for row in seeds[0]] != [row["response_length"] for row in seeds[1]]


@pytest.fixture(scope="module")
def llama_source(tmp_path_factory):
  """A tiny random Llama checkpoint (2 heads of 32) and BPE tokenizer: `init_from=hf:DIR`."""
  from tests.interop import tiny_hf  # pylint: disable=g-import-not-at-top
  directory = tmp_path_factory.mktemp("llama")
  tiny_hf.bpe_tokenizer(str(directory))
  tiny_hf.hf_model("llama", num_attention_heads=2, num_key_value_heads=2).save_pretrained(directory)
  return f"hf:{directory}"


@needs_vllm
def test_lora_adapters_pushed_as_vllm_adapters_sample_as_the_merged_weights_do(llama_source, tmp_path):
  """rollout.vllm.lora_adapters: the base pushed once, then each update's adapters alone, which
  vLLM applies unmerged; the gap stays at float error and the run draws what the merged push draws."""
  runs = {}
  for adapters in (True, False):
    cfg = engine_config(llama_source)
    cfg.lora.rank = 4
    cfg.reward.fns = ("tests/training/rl/echo_environment.py:short",)  # a random model: no EOS, words vary
    cfg.rl.penalise_no_eos = False
    cfg.rollout.vllm.lora_adapters = adapters
    stages.run(cfg, str(tmp_path / str(adapters)))
    runs[adapters] = train_rows(tmp_path / str(adapters))
  rows, merged = runs[True], runs[False]
  assert len(rows) == 3 and all(row["rollout/logprob_gap_max"] < 1e-4 for row in rows), rows
  pushed = [row["rollout/weight_push_mb"] for row in rows]  # base and adapters, then the adapters alone
  assert pushed[1] == pushed[2] < pushed[0] / 10 and pushed[0] > merged[0]["rollout/weight_push_mb"]
  assert rows[-1]["kl"] != 0  # the adapters moved: later pushes were of new ones
  for mine, theirs in zip(rows, merged, strict=True):
    assert mine["response_length"] == theirs["response_length"]
    assert mine["kl"] == pytest.approx(theirs["kl"], rel=1e-4, abs=1e-7)


def test_engine_settings_and_what_the_engine_does_not_run_with_are_one_line_errors(tiny_ppo, monkeypatch):
  cfg = tiny_ppo.copy_and_resolve_references()
  cfg.rollout.engine = "sglang"
  with pytest.raises(UserError, match="rollout.engine='sglang': choose one of jax, vllm"):
    rl_plan.resolve(cfg)
  cfg.rollout.engine = "vllm"
  cfg.vmap_seeds = 2
  with monkeypatch.context() as patch:  # vmapped seeds' rows are stacked on one host
    patch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(UserError, match="rollout.engine=vllm with vmap_seeds > 1 runs on one process"):
      engine_rollout.check_engine(cfg)
  del cfg.rollout.vllm["lora_adapters"]  # a config from before the setting existed: its default
  assert vllm_engine.settings_of(cfg).lora_adapters is False
  cfg.rollout.vllm.timeout = 5.0
  with pytest.raises(UserError, match="rollout.vllm.timeout: not a vLLM setting"):
    vllm_engine.settings_of(cfg)
  del cfg.rollout.vllm["timeout"], cfg.rollout.vllm["dtype"]
  with pytest.raises(UserError, match="rollout.vllm.dtype: missing"):
    vllm_engine.settings_of(cfg)
  cfg.rl.off_policy_steps = 1  # vmapped seeds run with the engine on-policy only, as with ours
  with pytest.raises(UserError, match="rl.off_policy_steps >= 1 with vmap_seeds > 1 is not supported yet"):
    rl_trainer.check_config(cfg)


@needs_vllm
def test_a_mixture_of_experts_policy_is_refused_on_vllms_cpu_build():
  """Its CPU MoE kernel keeps the experts it prepacked at load after a push (vllm_engine.py)."""
  from tests.conftest import LLAMA, small_model  # pylint: disable=g-import-not-at-top
  vllm_engine.refuse_cpu_experts(small_model(**LLAMA).n_experts)
  with pytest.raises(UserError, match="mixture-of-experts policy on vLLM's CPU build is not supported"):
    vllm_engine.refuse_cpu_experts(small_model(**LLAMA, n_experts=4, experts_per_token=2).n_experts)


def multi_turn_config(sft_run, **rl):
  echo = "tests/training/rl/echo_environment.py"  # answers every turn: trajectories of several turns
  cfg = engine_config(sft_run, **rl)
  cfg.update(dict(plugins=(echo,)))
  cfg.reward.fns = (f"{echo}:short",)
  cfg.env.update(dict(name="echo", max_turns=3, turn_tokens=6))
  cfg.sample.max_new_tokens = 40
  cfg.train.update(dict(num_steps=2, eval_every=2, checkpoint_every=2))
  assert rl_plan.resolve(cfg).driver == "multi_turn"
  return cfg


@needs_vllm
def test_multi_turn_trajectories_are_sampled_turn_by_turn_from_token_ids(sft_run, tmp_path):
  cfg = multi_turn_config(sft_run)
  stages.run(cfg, str(tmp_path / "run"))
  rows = train_rows(tmp_path / "run")
  # The engine's log-probs of the policy's tokens are the trainer's, turn after turn (the environment's are masked).
  assert len(rows) == 2 and all(row["rollout/logprob_gap_max"] < 1e-4 and row["turns"] > 1 for row in rows), rows


def own_process_config(sft_run):
  cfg = engine_config(sft_run, off_policy_steps=1, rollout_correction="token_tis")
  cfg.rollout.devices = 1
  cfg.train.checkpoint_every = 2  # and at the end: a resume from step 2 draws step 3 again
  return cfg


@pytest.fixture(scope="module")
def own_process_dir(sft_run, tmp_path_factory):
  """Off-policy GRPO (K = 1) with vLLM's engine in a process of its own (rollout.devices=1): its
  run directory."""
  directory = tmp_path_factory.mktemp("vllm_process") / "run"
  stages.run(own_process_config(sft_run), str(directory))
  return directory


@pytest.fixture(scope="module")
def own_process_run(own_process_dir):
  """The metrics of its iterations."""
  return train_rows(own_process_dir)


@needs_vllm
def test_the_engine_in_its_own_process_samples_while_the_trainer_updates_and_stops_with_the_run(own_process_run):
  rows = own_process_run
  # Under the params that drew each rollout the engine's log-probs are the trainer's: every push landed.
  assert len(rows) == 3 and all(row["rl/staleness"] < 1e-4 for row in rows), rows
  assert rows[0]["rollout/logprob_gap_max"] < 1e-4 and rows[-1]["rollout/logprob_gap_max"] > 1e-4
  assert all(row["time/engine_wait"] >= 0 and row["time/engine_rollout"] > 0 for row in rows)
  # The first iteration samples with the weights the queue's rollout was drawn with: pushed once, before it.
  assert "time/weight_push" not in rows[0] and all(row["time/weight_push"] > 0 for row in rows[1:])
  assert not multiprocessing.active_children()  # the engine's process ended with the run


@needs_vllm
def test_the_engine_in_its_own_process_draws_the_tokens_the_in_process_engine_draws(sft_run, own_process_run,
                                                                                    tmp_path):
  """Same seeds, same pushed weights: the same responses (so the same lengths, and the same KL to
  the reference, of the same tokens under the same updates)."""
  cfg = engine_config(sft_run, off_policy_steps=1, rollout_correction="token_tis")
  stages.run(cfg, str(tmp_path / "run"))
  for here, own in zip(train_rows(tmp_path / "run"), own_process_run, strict=True):
    assert (here["response_length"], here["no_eos_fraction"]) == (own["response_length"], own["no_eos_fraction"])
    assert here["kl"] == pytest.approx(own["kl"], rel=1e-4, abs=1e-7)


@needs_vllm
def test_a_run_killed_after_a_checkpoint_resumes_exactly_with_a_new_engine_process(sft_run, own_process_dir,
                                                                                  tmp_path):
  """As if killed after step 2's checkpoint: the same run restores the state (the queued rollout
  included), starts a new engine process, pushes it the restored policy and draws step 3's
  rollout as the uninterrupted run did; step 3's metrics are the uninterrupted run's."""
  resumed = tmp_path / "run"
  shutil.copytree(own_process_dir, resumed)
  shutil.rmtree(resumed / "checkpoints" / "3")
  os.remove(resumed / "summary.json")
  stages.run(own_process_config(sft_run), str(resumed))
  theirs, ours = train_rows(own_process_dir)[-1], train_rows(resumed)[-1]
  assert ours["step"] == theirs["step"] == 3 and "time/weight_push" in ours  # pushed again after the restore
  timed = lambda key: key.startswith("time/") or "second" in key
  measured = {k for k in theirs if not timed(k) and isinstance(theirs[k], float)}
  assert measured >= {"kl", "entropy", "rl/staleness", "rollout/logprob_gap_max"}, sorted(measured)
  for key in measured:
    assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-7), key


@needs_vllm
def test_multi_turn_with_the_engine_in_its_own_process_draws_each_turn_while_the_trainer_updates(sft_run, tmp_path):
  cfg = multi_turn_config(sft_run, off_policy_steps=1)
  cfg.rollout.devices = 1
  stages.run(cfg, str(tmp_path / "run"))
  rows = train_rows(tmp_path / "run")
  # Under the copy of the policy pushed to the engine's process its log-probs are the trainer's, turn after turn.
  assert len(rows) == 2 and all(row["rl/staleness"] < 1e-4 and row["turns"] > 1 for row in rows), rows
  assert not multiprocessing.active_children()  # the engine's process ended with the run


@needs_vllm
def test_two_processes_each_sample_their_rows_with_their_own_engine_as_one_process_does(sft_run, own_process_run,
                                                                                        tmp_path):
  """jax.distributed with two processes of one device each, each with vLLM in-process: each
  pushes the whole policy (gathered from both) and draws its own rows with their seeds; the
  tokens are those one engine drew for all rows (the run in its own process, same config)."""
  from tests.test_distributed import launch  # pylint: disable=g-import-not-at-top
  config_file = tmp_path / "two_hosts.py"
  config_file.write_text("from tests.training.rl.test_engine_rollout import engine_config\n\n"
                         "def get_config(arg=None):\n"
                         f"  return engine_config({sft_run!r}, off_policy_steps=1, rollout_correction='token_tis')\n")
  logs = launch(config_file, tmp_path / "run", PROCESSES="2", DEVICES="1")
  assert "process 1 of 2: 1 local devices, 2 in all" in logs
  configs = [tmp_path / "run" / name / "config.json" for name in ("engine_policy", "engine_policy_process_1")]
  assert all(path.exists() for path in configs)  # each process's engine started from its own
  rows = train_rows(tmp_path / "run")
  assert len(rows) == 3 and all(row["rl/staleness"] < 1e-4 for row in rows), rows
  for two, one in zip(rows, own_process_run, strict=True):
    assert (two["response_length"], two["no_eos_fraction"]) == (one["response_length"], one["no_eos_fraction"])
    assert two["kl"] == pytest.approx(one["kl"], rel=1e-4, abs=1e-7)


@needs_vllm
def test_an_engine_process_that_dies_mid_run_stops_it_with_one_line(sft_run, tmp_path, monkeypatch):
  submit, calls = vllm_process.EngineProcess.submit, []

  def killed_on_the_second_request(engine, *args, **kwargs):  # the first iteration's (the first: the queue's)
    calls.append(engine)
    if len(calls) == 2:
      os.kill(engine.process.pid, signal.SIGKILL)
      engine.process.join()
    return submit(engine, *args, **kwargs)

  monkeypatch.setattr(vllm_process.EngineProcess, "submit", killed_on_the_second_request)
  cfg = engine_config(sft_run, off_policy_steps=1)
  cfg.rollout.devices = 1
  with pytest.raises(vllm_process.EngineProcessError, match=r"engine process \(pid \d+\) died") as error:
    stages.run(cfg, str(tmp_path / "run"))
  assert "\n" not in str(error.value) and not multiprocessing.active_children()


@needs_vllm
def test_a_preempted_run_checkpoints_with_its_engine_process_alive_then_stops_it(sft_run, tmp_path, monkeypatch):
  """A scheduler's SIGTERM reaches the trainer and the engine's process: the engine ignores it and
  serves the step the trainer finishes before it checkpoints; then the run stops the engine."""
  submit, notified = vllm_process.EngineProcess.submit, []

  def notice_then_submit(engine, *args, **kwargs):
    if not notified:  # at the queue's first rollout: the run stops after its first iteration
      notified.append(engine.process.pid)
      for pid in (os.getpid(), engine.process.pid):
        os.kill(pid, signal.SIGTERM)
    return submit(engine, *args, **kwargs)

  monkeypatch.setattr(vllm_process.EngineProcess, "submit", notice_then_submit)
  cfg = engine_config(sft_run, off_policy_steps=1)
  cfg.rollout.devices = 1
  previous = signal.getsignal(signal.SIGTERM)
  preemption.listen()
  try:
    with pytest.raises(Preempted, match="preempted after step 1: checkpoint of step 1"):
      stages.run(cfg, str(tmp_path / "run"))
  finally:
    signal.signal(signal.SIGTERM, previous)
    preemption._notice.clear()  # pylint: disable=protected-access
  assert len(train_rows(tmp_path / "run")) == 1 and not multiprocessing.active_children()


def test_an_engine_on_devices_of_its_own_needs_off_policy_and_devices_left_to_train_on(tiny_ppo):
  cfg = tiny_ppo.copy_and_resolve_references()
  cfg.update(dict(algo="grpo"))
  cfg.reward.fns = ("length",)
  cfg.rollout.update(dict(engine="vllm", devices=1))
  with pytest.raises(UserError, match="sampling on devices of its own needs rl.off_policy_steps >= 1"):
    rl_trainer.check_config(cfg)
  cfg.rl.off_policy_steps = 1
  cfg.rollout.devices = len(os.sched_getaffinity(0))
  with pytest.raises(UserError, match="leaving none to train on"):
    rl_trainer.check_config(cfg)
