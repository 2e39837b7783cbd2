"""Time one fixed workload and print one JSON line: the figures, the device, the JAX version.

  python benchmarks/run.py --workload=w1             # PPO iteration on the tiny GPT-2 (CPU-sized)
  python benchmarks/run.py --workload=w1 --peer=trl  # ... and TRL's, measured in the same run (bare --peer: trl)
  python benchmarks/run.py --workload=cpu --peer=trl # w1 w2 w3 w4 sampler, then a markdown table
  python benchmarks/run.py --workload=cpu --peer=trl --rounds=3   # ... each side timed 3 times, alternating
  python benchmarks/run.py --workload=w4 --peer=tunix --rounds=3  # Google's Tunix instead (w1 and w4 only)
  python benchmarks/run.py --workload=gpu            # pretrain, decode, ppo_large (gpt2_small)
  python benchmarks/run.py --workload=rollout --preset=tiny --lengths=benchmarks/lengths/lognormal_256.txt --budget=256
  python benchmarks/run.py --workload=rl_update --preset=tiny --lengths=benchmarks/lengths/lognormal_256.txt --budget=256
  python benchmarks/run.py --workload=rollout_vllm --preset=tiny --lengths=benchmarks/lengths/lognormal_256.txt --budget=256

Workloads: w1 PPO (64 prompts x 16 tokens, 32 new, 4 epochs, 1 minibatch; policy, reference,
reward model, critic), w2 DPO (64 pairs, 16 + 32 tokens; w2_shared: each pair in one row of 81
tokens holding its prompt once, data.share_prompt's layout, against the peer's w2), w3 reward model (64 pairs x 48),
w4 RLOO (k = 4, 64 responses), w5 w1 with a host reward function added (rollout -> host
scoring -> update; timed against w1 in the same rounds, alternating: `host_overhead`), w6
off-policy PPO with long generations (64 prompts x 16 -> 256 tokens, K = 1: the sampler on
one CPU device, the trainer on the other; timed against w6_sync, the same PPO synchronous on
both devices: `speedup_vs_sync`; parts: the rollout and the update on their own), sampler
(KV cache, w1's batch), rollout (one rollout replaying a file of response lengths, each row
stopped at its own, with static and with continuous batching (--slots; --paged: over a paged
cache of --cache_blocks blocks of --block_size), timed alternately:
each one's tokens per second and KV cache peak bytes; --preset, --lengths, --budget;
rollout_static: the static side alone, for --profile), rl_update (the RL iteration's update
half, GRPO k = 4, one epoch: scoring, advantages, the update, on a rollout replaying --lengths,
packed and padded timed alternately: each one's seconds and the speedup; rl_update_padded:
the padded side alone), rollout_vllm (rollout's rollout drawn by vLLM's engine in this process,
timed alternately with our static sampler: each one's tokens per second; needs the `vllm`
extra), pretrain (gpt2_small at 1024), decode
(gpt2_small, 256 rows, 256 + 256 tokens, against the memory roofline) and ppo_large
(gpt2_small, 256 prompts x 256 tokens -> 256). The first call (compilation included) is reported apart from the steady state, the median of --repeats calls. FLOP/s are model FLOPs
(rlhf_jax/flops.py) over the median, against a matmul peak measured in the same run.
"""

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

from absl import app
from absl import flags
import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import limits, workloads  # pylint: disable=g-import-not-at-top
from rlhf_jax import distributed  # pylint: disable=g-import-not-at-top
from rlhf_jax.models.continuous import slots_for  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
CPU_SET = ("w1", "w2", "w3", "w4", "w5", "sampler")  # w6 is timed on its own (long generations), w2_shared too
GPU_SET = ("pretrain", "decode", "ppo_large")
flags.DEFINE_enum("workload", "w1", [*CPU_SET, "w2_shared", "w6", "w6_sync", "rollout", "rollout_static", "rl_update",
                                     "rl_update_padded", "rollout_vllm", *GPU_SET, "cpu", "gpu"],
                  "What to time (cpu / gpu: each of a set).")
flags.DEFINE_string("lengths", "benchmarks/lengths/lognormal_256.txt", "rollout, rl_update: the response lengths to replay, "
                    "one integer a line (benchmarks/lengths.py writes them).")
flags.DEFINE_integer("budget", 0, "rollout, rl_update: max_new_tokens (0: the longest of --lengths).")
flags.DEFINE_integer("pack_rows", 0, "rl_update: rl.pack_rows (0: an eighth of the rows).")
flags.DEFINE_integer("slots", 0, "rollout: continuous batching's slots (0: a quarter of the rows).")
flags.DEFINE_bool("paged", False, "rollout: continuous batching over a paged KV cache (sample.batching=paged).")
flags.DEFINE_integer("cache_blocks", 0, "rollout --paged: the pool's blocks (0: half of every slot's whole length).")
flags.DEFINE_integer("block_size", 16, "rollout --paged: tokens a block.")
flags.DEFINE_enum("paged_attention", "xla", ["xla", "pallas"], "rollout --paged: attention over the pages.")
flags.DEFINE_integer("repeats", 5, "Timed calls after the first.")
flags.DEFINE_enum("peer", "", ["", "trl", "tunix"], "Also run this library's version (benchmarks/peers, after its "
                  "setup) and give the ratio; a bare --peer is --peer=trl.")
flags.DEFINE_integer("rounds", 1, "Timings of --repeats calls, each just after the peer's run with --peer; figures are "
                     "medians over rounds, the speedup the median of each round's ratio.")
flags.DEFINE_integer("rows", 0, "pretrain: batch rows (0: the preset's).")
flags.DEFINE_string("preset", "gpt2_small", "Model preset of the accelerator-sized workloads.")
flags.DEFINE_enum("attention", "auto", ["auto", "xla", "cudnn"], "model.attention of the accelerator-sized ones.")
flags.DEFINE_integer("cpu_devices", -1, "On a CPU host, JAX devices to split it into (distributed.cpu_devices): "
                     "-1, one per core (rounded down to a power of two, so batches divide); 0, JAX's one.")
flags.DEFINE_string("profile", "", "Also trace 3 calls with jax.profiler into DIR/WORKLOAD "
                    "(summarise with benchmarks/profile_summary.py).")
PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers")


@dataclasses.dataclass(frozen=True)
class Peer:
  """Another library's version of some workloads: a script in its own virtual environment
  (under PEERS) printing one JSON line. `versions` maps its version keys to ours (Tunix's
  "jax" must not overwrite our own)."""
  venv: str
  script: str
  setup: str
  workloads: tuple[str, ...]
  versions: dict


PEER_SPECS = {
    "trl": Peer(".venv", "trl_bench.py", "bash benchmarks/peers/setup.sh", ("w1", "w2", "w3", "w4", "sampler"),
                {"trl": "trl", "torch": "torch"}),
    "tunix": Peer(".venv-tunix", "tunix_bench.py", "bash benchmarks/peers/setup.sh tunix", ("w1", "w4"),
                  {"tunix": "tunix", "jax": "tunix_jax", "flax": "tunix_flax"}),
}
BUILDERS = {
    "w1": lambda: workloads.rl_workload("ppo"),
    "w2": workloads.dpo_workload,
    "w2_shared": lambda: workloads.dpo_workload(share_prompt=True),
    "w3": workloads.reward_workload,
    "w4": lambda: workloads.rl_workload("rloo", prompts=16, k=4, epochs=1),
    "w5": lambda: workloads.rl_workload("ppo", host_reward=workloads.distinct_words),
    "w6": lambda: workloads.off_policy_workload(1),
    "w6_sync": lambda: workloads.off_policy_workload(0),
    "sampler": workloads.sampler_workload,
    "rollout": lambda: rollout(continuous=True),
    "rollout_static": lambda: rollout(continuous=False),
    "rollout_vllm": lambda: workloads.vllm_rollout_workload(
        workloads.read_lengths(FLAGS.lengths), FLAGS.preset, workloads.preset_model(FLAGS.preset),
        budget=FLAGS.budget, directory=tempfile.mkdtemp(prefix="vllm_policy_")),
    "rl_update": lambda: rl_update(packing=True),
    "rl_update_padded": lambda: rl_update(packing=False),
    "pretrain": lambda: workloads.lm_workload(FLAGS.preset, preset_model(), rows=FLAGS.rows),
    "decode": lambda: workloads.sampler_workload(FLAGS.preset, preset_model(), rows=256, prompt_len=256,
                                                 new_tokens=256),
    "ppo_large": lambda: workloads.rl_workload("ppo", FLAGS.preset, preset_model(), prompts=256, prompt_len=256,
                                               new_tokens=256, minibatches=4),
}


# Workloads timed against another in the same rounds (just before each of theirs), for a ratio.
BASELINES = {"w5": "w1", "w6": "w6_sync", "rollout": "rollout_static", "rl_update": "rl_update_padded",
             "rollout_vllm": "rollout_static"}
# Workloads reported side by side with their baseline: (ours, the baseline's) names in the JSON.
SIDES = {"rollout": ("continuous", "static"), "rl_update": ("packed", "padded"), "rollout_vllm": ("vllm", "ours_static")}
# Ours done another way, against the peer's same workload: w2 with each pair's prompt held once.
PEER_WORKLOAD = {"w2_shared": "w2"}


def rollout(continuous: bool) -> workloads.Workload:
  """The rollout replaying --lengths, with continuous batching (--slots) or static."""
  lengths = workloads.read_lengths(FLAGS.lengths)
  slots = slots_for("continuous", FLAGS.slots, len(lengths)) if continuous else 0
  return workloads.rollout_workload(lengths, FLAGS.preset, workloads.preset_model(FLAGS.preset),
                                    budget=FLAGS.budget, slots=slots, paged=continuous and FLAGS.paged,
                                    cache_blocks=FLAGS.cache_blocks, block_size=FLAGS.block_size,
                                    paged_attention=FLAGS.paged_attention)


def rl_update(packing: bool) -> workloads.Workload:
  """The RL iteration's update half on a rollout replaying --lengths, packed or padded."""
  lengths = workloads.read_lengths(FLAGS.lengths)
  return workloads.update_workload(lengths, FLAGS.preset, workloads.preset_model(FLAGS.preset), budget=FLAGS.budget,
                                   packing=packing, pack_rows=FLAGS.pack_rows)


def preset_model() -> dict:
  """The accelerator-sized workloads' model: the preset's, with --attention."""
  return {**(workloads.preset_model(FLAGS.preset) or {}), "attention": FLAGS.attention}


def paired_rounds(name: str, step, baseline=None) -> tuple[float, list, list, list]:
  """(first call's seconds, our median of each round, the peer's result of each round, the
  baseline workload's median of each round). With --peer, the peer runs in its own process just
  before each of our timings, while ours sits idle; a baseline (BASELINES) is timed just before
  each too: on a noisy machine each round's ratio compares two timings taken back to back."""
  timings, theirs, base = [], [], []
  for _ in range(FLAGS.rounds):
    theirs_name = PEER_WORKLOAD.get(name, name)
    if FLAGS.peer and theirs_name in PEER_SPECS[FLAGS.peer].workloads:  # no peer has w5 / w6 (baseline-timed)
      theirs.append(peer(FLAGS.peer, theirs_name))
    if baseline is not None:
      base.append(limits.timed(baseline, FLAGS.repeats)[1])
    timings.append(limits.timed(step, FLAGS.repeats))
  return timings[0][0], [seconds for _, seconds in timings], theirs, base


def measure(name: str, peak: float) -> tuple[dict, list]:
  """Builds, times and (for the GPU figures) relates one workload to the device's limits;
  also gives the peer's results of the same rounds (none without --peer or where it has none)."""
  workload = BUILDERS[name]()
  baseline = BUILDERS[BASELINES[name]]() if name in BASELINES else None
  first, rounds, theirs, base = paired_rounds(name, workload.step, baseline and baseline.step)
  seconds = statistics.median(rounds)
  result = {"workload": name, **workload.info, "compile_s": first - rounds[0], "seconds": seconds,
            "repeats": FLAGS.repeats, "round_seconds": rounds, "model_gflop": workload.flops / 1e9,
            "flops_per_s": workload.flops / seconds, "fraction_of_peak": workload.flops / seconds / peak}
  if name in SIDES:  # ours and the baseline side by side, timed in alternation
    result.update(sides(name, (workload.info, rounds), (baseline.info, base)))
  if name == "rollout":  # each side against the memory roofline of its own slot count
    rate = limits.bandwidth()
    for side in SIDES[name]:
      result[side]["fraction_of_roofline"] = result[side].pop("floor_bytes") / rate / result[side]["seconds"]
    result["bandwidth_gb_per_s"] = rate / 1e9
  elif base and name not in SIDES:
    ratio = statistics.median(ours / theirs for ours, theirs in zip(rounds, base))
    result.update({f"{BASELINES[name]}_round_seconds": base,
                   **({"host_overhead": ratio - 1.0} if name == "w5" else {"speedup_vs_sync": 1.0 / ratio})})
  if FLAGS.profile:
    with jax.profiler.trace(os.path.join(FLAGS.profile, name), create_perfetto_trace=True):
      for _ in range(3):
        jax.block_until_ready(workload.step())
  if workload.compiled is not None:
    result["compilations"] = workload.compiled._cache_size()  # 1: nothing recompiled while timing
  for part, (call, _) in workload.parts.items():
    result[f"{part}_s"] = limits.timed(call, FLAGS.repeats)[1]
    result[f"{part}_share"] = result[f"{part}_s"] / seconds
  if "generated_tokens" in workload.info:
    result["tokens_per_s"] = workload.info["generated_tokens"] / seconds
  if name == "decode":
    result.update(limits.decode_roofline(workload.model_cfg, workload.info, seconds))
  if name == "pretrain":
    result.update(limits.model_flops_utilisation(workload.flops / seconds))
  return result, theirs


def sides(name: str, ours: tuple, baseline: tuple) -> dict:
  """Each side's (info, round seconds) as its own figures, and the median of the rounds' speedups."""
  def figures(info, times):
    seconds = statistics.median(times)
    if name == "rollout":
      return {"tokens_per_s": info["generated_tokens"] / seconds, "peak_cache_bytes": info["peak_cache_bytes"],
              "slots": info["slots"], "cache": info["cache"], "seconds": seconds, "round_seconds": times,
              "floor_bytes": info["floor_bytes"]}
    if name == "rollout_vllm":
      return {"tokens_per_s": info["generated_tokens"] / seconds, "seconds": seconds, "round_seconds": times,
              "batching": info.get("batching", "vllm")}
    return {"seconds": seconds, "round_seconds": times, "pack_rows": info["pack_rows"]}
  result = {side: figures(*of) for side, of in zip(SIDES[name], (ours, baseline))}
  result["speedup"] = statistics.median(theirs / mine for mine, theirs in zip(ours[1], baseline[1]))
  if name == "rollout":
    result["cache_ratio"] = ours[0]["peak_cache_bytes"] / baseline[0]["peak_cache_bytes"]
  return result


def peer_argv(argv: list) -> list:
  """argv with a bare `--peer` (once a boolean flag) as `--peer=trl`, unless a value follows it."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg == "--peer" and (i + 1 == len(out) or out[i + 1] not in PEER_SPECS):
      out[i] = "--peer=trl"
  return out


def peer_python(name: str) -> str:
  """The peer's interpreter; a one-line exit naming the setup command where it is not built."""
  spec = PEER_SPECS[name]
  python = os.path.join(PEERS, spec.venv, "bin", "python")
  if not os.path.exists(python):
    raise SystemExit(f"--peer={name}: no environment at {python}; run `{spec.setup}` first")
  return python


def peer_names(name: str, names: tuple) -> tuple:
  """The workloads of `names` the peer has; a one-line exit if it has none of them."""
  shared = tuple(n for n in names if PEER_WORKLOAD.get(n, n) in PEER_SPECS[name].workloads)
  if not shared:
    raise SystemExit(f"--peer={name} has only {', '.join(PEER_SPECS[name].workloads)}; asked for {', '.join(names)}")
  return shared


def peer(name: str, workload: str) -> dict:
  """The peer's figures for the same workload, from its own virtual environment."""
  script = os.path.join(PEERS, PEER_SPECS[name].script)
  out = subprocess.run([peer_python(name), script, f"--workload={workload}", f"--repeats={FLAGS.repeats}"],
                       check=True, capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def with_peer(ours: dict, theirs: list, peak: float, name: str = "trl") -> dict:
  """Ours and the peer's figures of the same rounds, medians over them, under keys named for it."""
  seconds = statistics.median(t["seconds"] for t in theirs)
  ratios = [t["seconds"] / o for t, o in zip(theirs, ours["round_seconds"])]
  versions = {ours_key: theirs[0].get(key) for key, ours_key in PEER_SPECS[name].versions.items()}
  merged = {**ours, f"{name}_seconds": seconds, f"{name}_round_seconds": [t["seconds"] for t in theirs],
            f"speedup_vs_{name}": statistics.median(ratios),
            f"{name}_fraction_of_peak": ours["model_gflop"] * 1e9 / seconds / peak, **versions,
            f"{name}_notes": theirs[0].get("notes", "")}
  for key in ("generation_share", "tokens_per_s"):
    if key in theirs[0]:
      merged[f"{name}_{key}"] = statistics.median(t[key] for t in theirs)
  return merged


def rounded(value):
  """Floats, also in lists and dicts, to 4 significant digits."""
  if isinstance(value, dict):
    return {k: rounded(v) for k, v in value.items()}
  if isinstance(value, list):
    return [rounded(v) for v in value]
  return float(f"{value:.4g}") if isinstance(value, float) else value


def cpu_devices() -> int:
  """--cpu_devices, with -1 as one per core, rounded down to a power of two."""
  return 2 ** (os.cpu_count().bit_length() - 1) if FLAGS.cpu_devices < 0 else FLAGS.cpu_devices


def main(argv):
  del argv
  distributed.split_cpu(cpu_devices())  # before anything touches a device; no effect off the CPU
  names = {"cpu": CPU_SET, "gpu": GPU_SET}.get(FLAGS.workload, (FLAGS.workload,))
  if FLAGS.peer:  # fail before any timing
    peer_python(FLAGS.peer)
    peer_names(FLAGS.peer, names)
  device = {"device": jax.devices()[0].device_kind, "num_devices": jax.device_count(), "jax": jax.__version__,
            "host": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
  peak = limits.matmul_peak()
  results = []
  for name in names:
    measured, theirs = measure(name, peak["peak_flops_per_s"])
    ours = {**measured, **device, **peak}
    result = rounded(with_peer(ours, theirs, peak["peak_flops_per_s"], FLAGS.peer) if theirs else ours)
    results.append(result)
    print(json.dumps(result), flush=True)
  if len(results) > 1:
    print(limits.table(results, FLAGS.peer or "trl"))


if __name__ == "__main__":
  app.run(main, argv=peer_argv(sys.argv))
