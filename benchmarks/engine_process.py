"""An off-policy RL iteration's wall time (K = 1) with vLLM's engine in the trainer's process
(`rollout.devices=0`) and in a process of its own (`rollout.devices=1`), alternating rounds; one
JSON line per run, then the medians:

  python benchmarks/engine_process.py --workdir=/tmp/engine_process --rounds=3

The RL config is experiments/engines.py's (configs/rl.py:tiny: GRPO, 16 prompts x 4 samples),
its reward the built-in `length` (no reward model to train upstream), from an SFT run of
configs/sft.py:tiny trained --sft_steps steps (its weights do not matter to the timing). An
iteration's time is the step-to-step difference of `compute/seconds` (evaluation excluded), the
median over a run's iterations after the first --warmup (compilation); each engine's figure is
the median over the rounds.
"""

import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/, run from anywhere
from configs import rl, sft  # pylint: disable=g-import-not-at-top
from rlhf_jax import stages  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/engine_process", "Where the SFT run and the RL runs go.")
flags.DEFINE_integer("rounds", 3, "Rounds, each one run per engine placement, alternating.")
flags.DEFINE_integer("iterations", 10, "RL iterations a run.")
flags.DEFINE_integer("warmup", 2, "Leading iterations left out (compilation, the engine's first calls).")
flags.DEFINE_integer("sft_steps", 20, "Steps of the SFT run and of its pretraining.")

PLACEMENTS = {"in_process": 0, "own_process": 1}  # rollout.devices


def sft_run(workdir: str) -> str:
  directory = os.path.join(workdir, "sft")
  cfg = sft.get_config("tiny")
  for stage in (cfg, cfg.upstream.pretrain):
    stage.train.update(dict(num_steps=FLAGS.sft_steps, eval_every=FLAGS.sft_steps, checkpoint_every=FLAGS.sft_steps))
  stages.run(cfg, directory)
  return directory


def rl_config(init_from: str, devices: int):
  cfg = rl.get_config("tiny")
  cfg.init_from, cfg.algo, cfg.reward.fns = init_from, "grpo", ("length",)
  cfg.rl.off_policy_steps = 1
  cfg.rollout.update(dict(engine="vllm", devices=devices))
  n = FLAGS.iterations
  cfg.train.update(dict(num_steps=n, eval_every=n, checkpoint_every=n, log_every=1))
  return cfg


def iteration_seconds(run_dir: str) -> dict:
  """The run's median iteration (seconds) and its median engine wait, after the warm-up."""
  with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [r for r in map(json.loads, f) if "time/engine_rollout" in r]
  seconds = [b["compute/seconds"] - a["compute/seconds"] for a, b in zip(rows, rows[1:])][FLAGS.warmup:]
  waits = [r["time/engine_wait"] for r in rows[FLAGS.warmup + 1:]]
  return {"iteration_s": statistics.median(seconds), "engine_wait_s": statistics.median(waits),
          "engine_rollout_s": statistics.median(r["time/engine_rollout"] for r in rows[FLAGS.warmup + 1:])}


def main(argv):
  del argv
  init_from = sft_run(FLAGS.workdir)
  figures = {name: [] for name in PLACEMENTS}
  for round_ in range(FLAGS.rounds):
    for name, devices in PLACEMENTS.items():
      run_dir = os.path.join(FLAGS.workdir, f"{name}_{round_}")
      started = time.time()
      stages.run(rl_config(init_from, devices), run_dir)
      result = {"round": round_, "engine": name, "run_s": time.time() - started, **iteration_seconds(run_dir)}
      figures[name].append(result)
      print(json.dumps(result), flush=True)
  medians = {name: {k: statistics.median(r[k] for r in rows) for k in ("iteration_s", "engine_wait_s",
                                                                         "engine_rollout_s")}
             for name, rows in figures.items()}
  ratios = [a["iteration_s"] / b["iteration_s"] for a, b in zip(figures["in_process"], figures["own_process"])]
  print(json.dumps({"medians": medians, "speedup_own_vs_in_process": statistics.median(ratios),
                    "cores": len(os.sched_getaffinity(0))}), flush=True)


if __name__ == "__main__":
  app.run(main)
