"""Line plots of metrics, shared by the sweep aggregator (groups of runs, bands over seeds) and
a run's report.png (each stage's curves). matplotlib is imported only when something is drawn.
"""

from typing import NamedTuple, Sequence

import numpy as np


class Curve(NamedTuple):
  label: str
  x: Sequence[float]
  y: Sequence[float]
  low: Sequence[float] | None = None  # a band from low to high (the aggregator's seeds)
  high: Sequence[float] | None = None
  style: str = "-o"  # a matplotlib format: "--" for a reference, "-o" for evaluations


def pyplot():
  """matplotlib's pyplot on a file-only backend (no display needed)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def draw_curves(ax, curves: Sequence[Curve], xlabel: str, ylabel: str, title: str) -> None:
  for curve in curves:
    line, = ax.plot(curve.x, curve.y, curve.style, label=curve.label, markersize=3)
    if curve.low is not None:
      ax.fill_between(curve.x, curve.low, curve.high, color=line.get_color(), alpha=0.2)
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  if curves:
    ax.legend(fontsize=8)


def series(rows: list, key: str):
  """(steps, values) of the rows of a metrics log that carry `key`, in step order."""
  points = sorted((row["step"], row[key]) for row in rows if isinstance(row.get(key), (int, float)))
  return [s for s, _ in points], [v for _, v in points]


def mean_band(runs_rows: list, key: str):
  """(steps, mean, min, max) of `key` over several runs' rows, at every step any run has."""
  steps = sorted({row["step"] for rows in runs_rows for row in rows if key in row})
  values = np.array([[next((row[key] for row in rows if row["step"] == s and key in row), np.nan) for s in steps]
                     for rows in runs_rows], float)
  return steps, np.nanmean(values, 0), np.nanmin(values, 0), np.nanmax(values, 0)


def save(fig, path: str, dpi: int = 120) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  pyplot().close(fig)
  return path
