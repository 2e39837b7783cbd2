"""Where the time goes: the ops of a `jax.profiler` trace (run.py --profile=DIR), summed.

  python benchmarks/profile_summary.py DIR [--top=30] [--calls=3]

Reads the newest perfetto trace under DIR and prints each op's (or GPU kernel's) total time
per call, largest first, then totals by kind (the name without its numeric suffix: on the
CPU `ynn_fusion` are XNNPACK/YNNPACK matmul fusions, `*_fusion` XLA loop fusions).
"""

import collections
import glob
import gzip
import json
import os
import re

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("top", 30, "Ops to list.")
flags.DEFINE_integer("calls", 3, "Calls traced (times are divided by it).")
# Host-side spans that enclose the ops rather than being ops.
ENCLOSING = ("ThunkExecutor", "$", "SlinkyThreadPool", "PjitFunction", "ParseArguments", "Execute",
             "CommonPjRt", "end:")


def op_times(trace_dir: str) -> collections.Counter:
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True))
  if not paths:
    raise SystemExit(f"no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(paths[-1]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  times = collections.Counter()
  for event in events:
    if event.get("ph") == "X" and not event["name"].startswith(ENCLOSING):
      times[event["name"]] += event.get("dur", 0)
  return times


def main(argv):
  times = op_times(argv[1])
  per_call = lambda us: us / 1e3 / FLAGS.calls
  total = sum(times.values())
  print(f"{per_call(total):.2f} ms of ops per call")
  for name, us in times.most_common(FLAGS.top):
    print(f"{per_call(us):9.3f} ms  {100 * us / total:5.1f}%  {name[:110]}")
  kinds = collections.Counter()
  for name, us in times.items():
    kinds[re.sub(r"[._]\d+$", "", name)[:60]] += us
  print("by kind:")
  for kind, us in kinds.most_common(FLAGS.top):
    print(f"{per_call(us):9.3f} ms  {100 * us / total:5.1f}%  {kind}")


if __name__ == "__main__":
  app.run(main)
