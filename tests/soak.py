"""Soak test (not in CI): kill a run many times at random moments, resume it each time, and
check that it ends with exactly the metrics of an uninterrupted run.

  python -m tests.soak --stage=pretrain --kills=30 --root=/tmp/soak
  python -m tests.soak --stage=ppo --kills=20 --root=/tmp/soak   # builds its upstream first

Each attempt starts the same command and, after a delay drawn uniformly over the uninterrupted
run's duration (so startup, compilation, steps, evaluations and checkpoint writes are all hit),
sends SIGKILL, or SIGTERM one time in four (which must checkpoint and exit 0). It stops when
the run finishes on its own, then compares metrics.jsonl and summary.json with the whole run.
Prints one JSON line: kills survived, preemptions, attempts, and whether the metrics are equal.
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
from tests.test_faults import assert_same_run, finish, run_to_end, start, write_config

flags.DEFINE_enum("stage", "pretrain", ["pretrain", "ppo", "dpo"], "the stage to soak (tests/test_faults.py configs)")
flags.DEFINE_integer("kills", 20, "signals to send before letting the run finish")
flags.DEFINE_integer("seed", None, "seed of the kill moments (default: random, printed)")
flags.DEFINE_string("root", "/tmp/rlhf_jax_soak", "scratch directory (emptied first)")
FLAGS = flags.FLAGS


def upstream(root) -> dict:
  """The shrunk pretrain -> SFT -> reward chain that the RL and DPO configs start from."""
  stages.run(make_tiny_reward(), os.path.join(root, "upstream"))
  return {"init_from": os.path.join(root, "upstream", "upstream", "sft"),
          "reward_from": os.path.join(root, "upstream")}


def soak(config_file: str, stage: str, workdir: str, kills: int, duration: float, rng: random.Random) -> dict:
  counts = {"kills": 0, "preemptions": 0, "attempts": 0}
  while True:
    counts["attempts"] += 1
    process = start(config_file, stage, workdir)
    if counts["kills"] + counts["preemptions"] < kills:
      time.sleep(rng.uniform(0.0, duration))
      sig = signal.SIGTERM if rng.random() < 0.25 else signal.SIGKILL
      if process.poll() is None:
        process.send_signal(sig)
    log = finish(process, workdir)
    if process.returncode == -signal.SIGKILL:
      counts["kills"] += 1
    elif process.returncode == 0 and "preempted after step" in log:
      counts["preemptions"] += 1
    elif process.returncode == 0:
      return counts  # finished
    elif process.returncode == -signal.SIGTERM:
      counts["kills"] += 1  # SIGTERM before the handler was installed (still starting up)
    else:
      raise RuntimeError(f"attempt {counts['attempts']} exited {process.returncode}:\n{log[-3000:]}")


def main(argv):
  del argv
  seed = FLAGS.seed if FLAGS.seed is not None else random.randrange(10**6)
  shutil.rmtree(FLAGS.root, ignore_errors=True)
  os.makedirs(FLAGS.root)
  config_file = write_config(FLAGS.root, upstream(FLAGS.root) if FLAGS.stage != "pretrain" else None)
  whole, resumed = os.path.join(FLAGS.root, "whole"), os.path.join(FLAGS.root, "resumed")
  started = time.time()
  run_to_end(config_file, FLAGS.stage, whole)
  duration = time.time() - started
  counts = soak(config_file, FLAGS.stage, resumed, FLAGS.kills, duration, random.Random(seed))
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
