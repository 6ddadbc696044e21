"""Early-phase Fisher measures read from a trial's logged curves.

Curves are pandas Series indexed by optimizer step; ``epoch`` holds the fractional epoch at the
steps where Tr(F) and the train loss are logged (design.md §4). Two families of reads:

**Smoothed reads** (what the analysis uses). Logged points can be noisy (Tr(F) with sampled
labels, as studies before the exact default logged it; a train-loss window can be a single short
batch) and are spaced by the schedule, so a max over points grows with the logging density and a
crossing can fire on one lucky batch. Each
curve is averaged over a box of ``window`` epochs at centres on a fixed grid of ``spacing``
epochs (:mod:`analysis.smoothing`): Tr(F) as the linear interpolant of its points, the train
loss as example-weighted window means. Then

- :func:`smoothed_peak`: the largest average at a centre ≥ epoch 1.0;
- :func:`smoothed_early`: the Tr(F) average at the first centre whose train-loss average is < ε.

Both return a :class:`Read`: the value, its standard error, the centre's epoch and the first
logged step at or after it. The standard error is the weighted mean of the points'
``fisher_trace_stderr`` (weights of the box average), as if their errors were fully correlated:
the probe is one fixed set of examples, so its composition error is shared by nearby points and
averaging does not shrink it. With the exact estimator that is all of the point's error; with
``top`` (the default) or sampled labels the label part is independent between points and this
bound is conservative. It does not cover the error of reading the curve between its points,
which depends on the logging density (below).

**Raw reads** (design §4's rules, which the trainable logs as its summary; kept to check the two
agree): :func:`early_fisher_trace`, :func:`fisher_peak`, :func:`fisher_at_epoch`. No interpolation:
every value is read at a logged step; a NaN point is not a measurement and is skipped.

Default box: ``WINDOW_EPOCHS`` = 1.0 on a grid of ``GRID_EPOCHS`` = 0.125 epochs. How far a
read depends on the logging density, measured on the default study's trial at lr 0.01 / 0.02 /
0.04 (``benchmarks/fisher_schedule.py --thin``: Tr(F) logged at every step, then thinned to
every k steps at each of the k phases; rms over the phases of the read's error against the
every-step read): every 4 steps 0.3 / 0.9 / 2.6 %, every 8 (the default schedule there) 0.7 /
3.5 / 5.0 %, every 16 2.3 / 11.9 / 14.2 %, epoch ends only 7.4 / 18.8 / 25.5 %, mostly low:
Tr(F) explodes within half an epoch and a sparse schedule's interpolant misses the top. A
2-epoch box roughly halves the error of sparse schedules but reads a lower, later peak; a
0.5-epoch box raises it. A box flattens a peak by about f''·w²/24, ~1 % for a bump 2 epochs
wide; the grid (8 centres per box) adds < 0.1 %. tests/analysis/test_measures.py checks the
≤ 5 % agreement on a curve shaped like such a trial's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.smoothing import grid, point_average, point_weights, window_average

WINDOW_EPOCHS = 1.0
GRID_EPOCHS = 0.125
PEAK_FROM_EPOCH = 1.0


@dataclass(frozen=True, slots=True)
class Read:
    """One smoothed read: value ± stderr at a grid centre (epochs), its first logged step, and
    ``spacing``: the largest gap, in steps, between the logged points its box interpolates.

    The stderr does not cover the error of reading the curve between its points; the spacing
    says how large that can be (on digits, points ≤ 8 steps apart read the peak within ~5 % rms
    of an every-step read, 22 apart within ~16 %: the module docstring, benchmarks/README.md).
    """

    value: float
    stderr: float  # NaN when no stderr curve was given
    epoch: float
    step: int
    spacing: int


def _points(values: pd.Series, epoch: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, epochs, values) at the steps both curves logged, NaN dropped, epochs increasing."""
    joined = pd.concat({"v": values, "t": epoch}, axis=1, join="inner").dropna().sort_index()
    joined = joined[~joined["t"].duplicated()]
    return joined.index.to_numpy(int), joined["t"].to_numpy(float), joined["v"].to_numpy(float)


def _read(steps: np.ndarray, t: np.ndarray, stderr: np.ndarray, centre: float, value: float, window: float) -> Read:
    where, weights = point_weights(t, centre, window)
    se = float(weights @ stderr[where])  # fully correlated errors: see the module docstring
    step = int(steps[np.searchsorted(t, centre - 1e-9)])
    used = steps[where]
    spacing = int(np.diff(used).max()) if len(used) > 1 else 0
    return Read(value=float(value), stderr=se, epoch=float(centre), step=step, spacing=spacing)


def _stderr_at(stderr: pd.Series | None, steps: np.ndarray) -> np.ndarray:
    if stderr is None:
        return np.full(len(steps), math.nan)
    return stderr.reindex(steps).to_numpy(float)


def smoothed_peak(
    fisher: pd.Series,
    epoch: pd.Series,
    *,
    stderr: pd.Series | None = None,
    window: float = WINDOW_EPOCHS,
    spacing: float = GRID_EPOCHS,
) -> Read | None:
    """The largest box average of Tr(F) at a grid centre ≥ epoch 1.0 (the first one on a tie).

    ``fisher``, ``stderr`` (``fisher_trace_stderr``) and ``epoch`` are indexed by step.
    None when no whole box fits after epoch 1.
    """
    steps, t, v = _points(fisher, epoch)
    if len(t) < 2:
        return None
    centres = grid(t[0], t[-1], window, spacing)
    centres = centres[centres >= PEAK_FROM_EPOCH - 1e-9]
    if not len(centres):
        return None
    averages = point_average(t, v, centres, window)
    k = int(np.argmax(averages))
    return _read(steps, t, _stderr_at(stderr, steps), centres[k], averages[k], window)


def smoothed_loss(
    train_loss: pd.Series,
    epoch: pd.Series,
    *,
    weights: pd.Series | None = None,
    window: float = WINDOW_EPOCHS,
    spacing: float = GRID_EPOCHS,
) -> pd.Series:
    """Example-weighted box averages of the train loss, indexed by grid centre (epochs).

    Each logged ``train_loss`` is the mean over its window since the previous point (the first
    window starts at epoch 0); ``weights`` (``train_examples``) are the windows' example counts.
    Without them a window weighs its epoch span (old studies).
    """
    joined = pd.concat({"loss": train_loss, "end": epoch}, axis=1, join="inner").dropna().sort_index()
    if weights is not None:
        joined["n"] = weights.reindex(joined.index)
    joined = joined[joined["end"].diff().fillna(joined["end"]) > 0]
    if joined.empty:
        return pd.Series(dtype=float)
    ends = joined["end"].to_numpy(float)
    starts = np.concatenate([[0.0], ends[:-1]])
    examples = joined["n"].to_numpy(float) if "n" in joined and joined["n"].notna().all() else ends - starts
    centres = grid(0.0, ends[-1], window, spacing)
    averages = window_average(starts, ends, joined["loss"].to_numpy(float), examples, centres, window)
    return pd.Series(averages, index=centres)


def smoothed_early(
    fisher: pd.Series,
    train_loss: pd.Series,
    epoch: pd.Series,
    epsilon: float,
    *,
    stderr: pd.Series | None = None,
    weights: pd.Series | None = None,
    window: float = WINDOW_EPOCHS,
    spacing: float = GRID_EPOCHS,
) -> Read | None:
    """Box-averaged Tr(F) at the first grid centre whose smoothed train loss (:func:`smoothed_loss`)
    is below ``epsilon``. None when the smoothed loss never crosses ε, or the Tr(F) curve does not
    cover a whole box around the crossing."""
    loss = smoothed_loss(train_loss, epoch, weights=weights, window=window, spacing=spacing)
    below = loss[loss < epsilon]
    steps, t, v = _points(fisher, epoch)
    if below.empty or len(t) < 2:
        return None
    centre = float(below.index[0])
    if centre - window / 2 < t[0] - 1e-9 or centre + window / 2 > t[-1] + 1e-9:
        return None
    value = point_average(t, v, np.array([centre]), window)[0]
    return _read(steps, t, _stderr_at(stderr, steps), centre, value, window)


def early_fisher_trace(train_loss: pd.Series, fisher: pd.Series, epsilon: float) -> tuple[float, int] | None:
    """Raw: the first logged Tr(F) at a step ≥ s*, s* = the first step whose train loss < ε."""
    fisher = fisher.dropna()
    below = train_loss[train_loss < epsilon]
    if below.empty:
        return None
    after = fisher[fisher.index >= below.index.min()]
    if after.empty:
        return None
    return float(after.iloc[0]), int(after.index[0])


def fisher_peak(fisher: pd.Series, epoch: pd.Series) -> tuple[float, int] | None:
    """Raw: the max logged Tr(F) over steps whose epoch is ≥ 1.0, and its first step."""
    past_first = epoch[epoch >= PEAK_FROM_EPOCH]
    if past_first.empty:
        return None
    window = fisher[fisher.index >= past_first.index.min()].dropna()
    if window.empty:
        return None
    return float(window.max()), int(window.idxmax())


def fisher_at_epoch(fisher: pd.Series, epoch: pd.Series, k: float) -> float:
    """Raw: the first logged Tr(F) at or after the end of epoch k (the paper's §5 uses k = 20)."""
    reached = epoch[epoch >= k]
    if reached.empty:
        return math.nan
    after = fisher.dropna()
    after = after[after.index >= reached.index.min()]
    return float(after.iloc[0]) if not after.empty else math.nan


def smoothed_at(values: pd.Series, epoch: pd.Series, centre: float, window: float = WINDOW_EPOCHS) -> float:
    """The box average of a curve at one centre (epochs), as the reads above average it; NaN
    where the curve does not cover the whole box."""
    _, t, v = _points(values, epoch)
    if len(t) < 2 or centre - window / 2 < t[0] - 1e-9 or centre + window / 2 > t[-1] + 1e-9:
        return math.nan
    return float(point_average(t, v, np.array([centre]), window)[0])
