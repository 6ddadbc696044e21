"""Box averages of logged curves on a fixed grid in fractional epochs.

Reads taken from these averages do not depend on how densely a curve was logged: the box is a
fixed width in epochs, not a number of points. Two kinds of curve, two representations:

- A **point curve** (Tr(F), measured at a step) is interpolated linearly between its logged points;
  the average at centre c is the exact integral of that interpolant over [c − w/2, c + w/2]
  divided by w. It is linear in the logged values, so :func:`point_weights` gives each point's
  weight in one average, which carries the points' standard errors into the read.
- A **window curve** (train loss = the mean over the examples since the previous point) is
  constant over its window; the average over a box weights each window by the examples that fall
  inside the box (its example count × the fraction of its epoch span inside the box).

Times are fractional epochs, increasing; every box lies inside the logged range (see :func:`grid`).
"""

from __future__ import annotations

import math

import numpy as np


def grid(start: float, stop: float, window: float, spacing: float) -> np.ndarray:
    """Centres k·spacing (integer k) whose whole box [c − w/2, c + w/2] lies in [start, stop]."""
    first = math.ceil((start + window / 2) / spacing - 1e-9)
    last = math.floor((stop - window / 2) / spacing + 1e-9)
    return np.arange(first, last + 1) * spacing


def _integral(t: np.ndarray, v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """∫ from t[0] to each x of the linear interpolant of v (shape (K,) or (K, M)) at knots t."""
    dt = np.diff(t)
    trapezoids = (v[:-1] + v[1:]) * (dt if v.ndim == 1 else dt[:, None]) / 2
    cumulative = np.concatenate([np.zeros_like(v[:1]), np.cumsum(trapezoids, axis=0)])
    j = np.clip(np.searchsorted(t, x, side="right") - 1, 0, len(t) - 2)
    u, span = x - t[j], dt[j]
    if v.ndim == 2:
        u, span = u[:, None], span[:, None]
    return cumulative[j] + v[j] * u + (v[j + 1] - v[j]) * u * u / (2 * span)


def point_average(t: np.ndarray, v: np.ndarray, centres: np.ndarray, window: float) -> np.ndarray:
    """Box averages of width ``window`` of the linear interpolant of (t, v) at ``centres``."""
    half = window / 2
    return (_integral(t, v, centres + half) - _integral(t, v, centres - half)) / window


def point_weights(t: np.ndarray, centre: float, window: float) -> tuple[slice, np.ndarray]:
    """The weights a_k of the points in one box average: average = Σ a_k v_k over ``t[slice]``.

    Only the knots around the box have non-zero weight, so the identity matrix fed through the
    (linear) average stays small however long the curve is.
    """
    half = window / 2
    lo = max(int(np.searchsorted(t, centre - half, side="right")) - 1, 0)
    hi = min(int(np.searchsorted(t, centre + half, side="left")), len(t) - 1)
    local = t[lo : hi + 1]
    weights = point_average(local, np.eye(len(local)), np.array([centre]), window)[0]
    return slice(lo, hi + 1), weights


def window_average(
    starts: np.ndarray, ends: np.ndarray, values: np.ndarray, examples: np.ndarray, centres: np.ndarray, window: float
) -> np.ndarray:
    """Example-weighted box averages of a curve of window means at ``centres``.

    Window i spans epochs (starts[i], ends[i]], holds examples[i] examples and has mean
    values[i]; windows are contiguous (starts[i] = ends[i − 1]). The cumulative example count and
    the cumulative loss mass are piecewise linear in epochs, so each box average is a ratio of
    two interpolated differences.
    """
    knots = np.concatenate([starts[:1], ends])
    mass = np.concatenate([[0.0], np.cumsum(examples)])
    total = np.concatenate([[0.0], np.cumsum(values * examples)])
    half = window / 2
    lo, hi = centres - half, centres + half
    held = np.interp(hi, knots, mass) - np.interp(lo, knots, mass)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.interp(hi, knots, total) - np.interp(lo, knots, total)) / held
