"""Writes a response-length distribution, one integer a line, for `benchmarks/run.py
--workload=rollout --lengths=FILE` to replay (issue 41's two distributions):

  python benchmarks/lengths.py --dist=lognormal --budget=256 --rows=64 --out=benchmarks/lengths/lognormal_256.txt
  python benchmarks/lengths.py --dist=uniform --budget=256 --rows=64 --out=benchmarks/lengths/uniform_256.txt

lognormal: median budget / 8, sigma 1 (a long tail: a few responses reach the budget), clipped
to [1, budget]; uniform: every length in [1, budget] equally likely. Seeded: the same file each time.
"""

from absl import app
from absl import flags
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_enum("dist", "lognormal", ["lognormal", "uniform"], "The distribution.")
flags.DEFINE_integer("budget", 256, "max_new_tokens: no length exceeds it.")
flags.DEFINE_integer("rows", 64, "How many lengths (responses).")
flags.DEFINE_float("sigma", 1.0, "lognormal: the log-lengths' standard deviation.")
flags.DEFINE_integer("seed", 0, "The draw's seed.")
flags.DEFINE_string("out", "", "The file to write (default: stdout).")


def draw(dist: str, budget: int, rows: int, sigma: float = 1.0, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  if dist == "uniform":
    return rng.integers(1, budget + 1, rows)
  return np.clip(np.round(rng.lognormal(np.log(budget / 8), sigma, rows)), 1, budget).astype(int)


def main(argv):
  del argv
  text = "".join(f"{n}\n" for n in draw(FLAGS.dist, FLAGS.budget, FLAGS.rows, FLAGS.sigma, FLAGS.seed))
  if FLAGS.out:
    with open(FLAGS.out, "w", encoding="utf-8") as f:
      f.write(text)
  else:
    print(text, end="")


if __name__ == "__main__":
  app.run(main)
