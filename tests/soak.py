"""Soak test (not in CI): kill a run many times at random moments, resume it each time, and
check that it ends with exactly the metrics of an uninterrupted run.

  python -m tests.soak --stage=pretrain --kills=30 --root=/tmp/soak
  python -m tests.soak --stage=ppo --kills=20 --root=/tmp/soak   # builds its upstream first

Each attempt starts the same command and interrupts it at a random moment: one time in five
0-10 s after the start (importing, compiling), otherwise 0-0.3 s after it logs a random step
beyond the last attempt's, drawn so that the interruptions spread over the run (steps,
evaluations and checkpoint writes are all hit). The signal
is SIGKILL, or one time in four SIGTERM, which must checkpoint and exit 0. After `--kills`
interruptions the run goes to the end, and metrics.jsonl and summary.json are compared with
the uninterrupted run's. Prints one JSON line: what was sent, and whether the metrics are equal.
"""

import json
import os
import random
import shutil
import signal
import time

from absl import app
from absl import flags

from rlhf_jax import stages
from tests.conftest import make_tiny_reward
from tests.test_faults import assert_same_run, interrupt, logged_steps, run_to_end, write_config

flags.DEFINE_enum("stage", "pretrain", ["pretrain", "ppo", "reinforce", "dpo"],
                  "the stage to soak (tests/test_faults.py configs)")
flags.DEFINE_integer("kills", 20, "signals to send before letting the run finish")
flags.DEFINE_integer("steps", 0, "train steps (0: the fault suite's: 24 for pretraining, 4 for PPO and DPO)")
flags.DEFINE_integer("seed", None, "seed of the kill moments (default: random, printed)")
flags.DEFINE_string("root", "/tmp/rlhf_jax_soak", "scratch directory (emptied first)")
FLAGS = flags.FLAGS


def upstream(root) -> dict:
  """The shrunk pretrain -> SFT -> reward chain that the RL and DPO configs start from."""
  stages.run(make_tiny_reward(), os.path.join(root, "upstream"))
  return {"init_from": os.path.join(root, "upstream", "upstream", "sft"),
          "reward_from": os.path.join(root, "upstream")}


def soak(config_file: str, stage: str, workdir: str, kills: int, num_steps: int, rng: random.Random) -> dict:
  """Interrupts the run `kills` times, then lets it finish; returns what happened."""
  counts = {"sigkill": 0, "sigterm": 0, "during_startup": 0, "attempts": 0}
  while counts["sigkill"] + counts["sigterm"] < kills:
    counts["attempts"] += 1
    done = logged_steps(workdir)  # the previous attempt's last logged step
    left = kills - counts["sigkill"] - counts["sigterm"]
    startup = done >= num_steps - 1 or rng.random() < 0.2
    # Spread over the steps left, so that `kills` interruptions fit in the run.
    target = 0 if startup else rng.randint(done + 1, done + max(1, (num_steps - 1 - done) // left))
    sig = signal.SIGTERM if rng.random() < 0.25 else signal.SIGKILL
    # A random moment: in startup and compilation (0-10 s), or 0-0.3 s after a random step.
    delay = rng.uniform(0, 10) if startup else rng.uniform(0, 0.3)
    code, log = interrupt(config_file, stage, workdir, sig, target, delay)
    if code == 0 and "preempted after step" not in log:
      return {**counts, "finished_early": True}
    if code not in (0, -signal.SIGKILL, -signal.SIGTERM):
      raise RuntimeError(f"attempt {counts['attempts']} exited {code}:\n{log[-3000:]}")
    counts["sigterm" if sig == signal.SIGTERM else "sigkill"] += 1
    counts["during_startup"] += startup
  counts["attempts"] += 1
  run_to_end(config_file, stage, workdir)
  return {**counts, "finished_early": False}


def main(argv):
  del argv
  seed = FLAGS.seed if FLAGS.seed is not None else random.randrange(10**6)
  shutil.rmtree(FLAGS.root, ignore_errors=True)
  os.makedirs(FLAGS.root)
  config_file = write_config(FLAGS.root, upstream(FLAGS.root) if FLAGS.stage != "pretrain" else None,
                             FLAGS.steps or None)
  whole, resumed = os.path.join(FLAGS.root, "whole"), os.path.join(FLAGS.root, "resumed")
  started = time.time()
  run_to_end(config_file, FLAGS.stage, whole)
  duration = time.time() - started
  num_steps = json.load(open(os.path.join(whole, "summary.json")))["step"]
  counts = soak(config_file, FLAGS.stage, resumed, FLAGS.kills, num_steps, random.Random(seed))
  try:
    assert_same_run(resumed, whole, seed)
    equal = True
  except AssertionError:
    equal = False
  print(json.dumps({"stage": FLAGS.stage, "seed": seed, **counts, "whole_run_seconds": round(duration, 1),
                    "metrics_equal": equal}))
  return 0 if equal else 1


if __name__ == "__main__":
  app.run(main)
