"""Across-configuration correlations of an early Tr(F) measure with test accuracy.

One point per configuration (:mod:`analysis.configurations`): the mean of log Tr(F) over its
replicas and the mean accuracy. With one trial per configuration this is the trial level.

- **r**: Spearman ρ, Kendall τ-b, and Pearson r on log Tr(F) (Tr(F) spans orders of magnitude).
- **p**: Spearman by a permutation test of the pairings (exact up to 7 configurations, else
  ``PERMUTATIONS`` seeded resamples), where scipy's t approximation is too liberal at these n
  (6 configurations: 0.005 against the exact 0.017); Kendall by scipy's exact test (normal
  approximation with ties); Pearson by the t test.
- **ci95**: Fisher z intervals, tanh(atanh r ± 1.96·se) with se² = (1 + r²/2)/(m − 3) for
  Spearman (Bonett & Wright 2000), 1/(m − 3) for Pearson, 0.437/(m − 4) for Kendall (Fieller,
  Hartley & Pearson 1957). Chosen over the bootstrap because they hold their coverage at
  m = 6–30 configurations where BCa and percentile bootstrap intervals do not (measured over
  300 simulated studies: BCa 85 % and percentile 84 % at m = 6). tests/analysis/test_calibration.py
  checks them on 500 studies per m: Spearman 98.8 / 95.0 / 96.0 %, Kendall 97.6 / 92.2 / 94.2 %,
  Pearson 93.8 / 91.6 / 95.0 % at m = 6 / 12 / 30. A perfect rank
  correlation is moved half a step towards 0 (the nearest value a sample can take) before the
  transform, else its interval would be the single point ±1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from analysis.configurations import group_means

SEED = 0
PERMUTATIONS = 9999
MIN_CONFIGURATIONS = 3
Z95 = float(stats.norm.ppf(0.975))


def _rank_r(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Pearson r of ``rx`` (..., m) with the fixed ``ry`` (m,) along the last axis."""
    xc = rx - rx.mean(-1, keepdims=True)
    yc = ry - ry.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc * yc).sum(-1) / np.sqrt((xc * xc).sum(-1) * (yc * yc).sum())


def spearman_permutation_p(x: np.ndarray, y: np.ndarray, resamples: int = PERMUTATIONS, seed: int = SEED) -> float:
    """Two-sided permutation p of Spearman ρ (exact when m! ≤ ``resamples``)."""
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    result = stats.permutation_test(
        (rx,),
        lambda r, axis=-1: _rank_r(np.moveaxis(r, axis, -1), ry),
        permutation_type="pairings",
        vectorized=True,
        n_resamples=resamples,
        rng=seed,
    )
    return float(result.pvalue)


def fisher_z_interval(r: float, m: int, method: str) -> list[float | None]:
    """95 % interval for a correlation of ``m`` points (see the module docstring)."""
    need = 5 if method == "kendall" else 4
    if m < need or not math.isfinite(r):
        return [None, None]
    step = 1e-12
    if method != "pearson":  # half the smallest step a rank statistic can take below |r| = 1
        step = 6 / (m**3 - m) if method == "spearman" else 2 / (m * (m - 1))
    shrunk = max(-1 + step, min(1 - step, r))
    if method == "spearman":
        var = (1 + shrunk**2 / 2) / (m - 3)
    else:
        var = 1 / (m - 3) if method == "pearson" else 0.437 / (m - 4)
    z, half = math.atanh(shrunk), Z95 * math.sqrt(var)
    low, high = math.tanh(z - half), math.tanh(z + half)
    return [min(low, r), max(high, r)]  # a perfect r stays inside its own interval


def configuration_points(
    measure: np.ndarray, accuracy: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean log Tr(F), mean accuracy) per configuration over trials with both values, and n trials."""
    keep = np.isfinite(measure) & np.isfinite(accuracy) & (measure > 0)
    if not keep.any():
        return np.empty(0), np.empty(0), 0
    means = group_means(np.column_stack([np.log(measure[keep]), accuracy[keep]]), groups[keep])
    return means[:, 0], means[:, 1], int(keep.sum())


def correlations(
    measure: np.ndarray, accuracy: np.ndarray, groups: np.ndarray, resamples: int = PERMUTATIONS
) -> dict[str, Any]:
    """The design §6 block: n (trials), n_configurations, then r, p and ci95 per method."""
    x, y, n = configuration_points(measure, accuracy, groups)
    m = len(x)
    block: dict[str, Any] = {"n": n, "n_configurations": m}
    if m < MIN_CONFIGURATIONS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return block
    spearman = float(stats.spearmanr(x, y).statistic)
    kendall = stats.kendalltau(x, y)
    pearson = stats.pearsonr(x, y)
    tests = {
        "spearman": (spearman, spearman_permutation_p(x, y, resamples)),
        "pearson": (float(pearson.statistic), float(pearson.pvalue)),
        "kendall": (float(kendall.statistic), float(kendall.pvalue)),
    }
    for name, (r, p) in tests.items():
        block[name] = {"r": r, "p": p, "ci95": fisher_z_interval(r, m, name)}
    return block
