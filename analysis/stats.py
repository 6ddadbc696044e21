"""Correlations with uncertainty: Spearman, Kendall and Pearson-on-log, seeded bootstrap CIs.

Pearson is computed on log Tr(F) (Tr(F) spans orders of magnitude across learning rates).
The 95 % interval is a percentile bootstrap over trials with a fixed seed, so a report is
reproducible. Partial correlations remove a covariate (log lr) from both variables by least
squares before correlating the residuals (on ranks for Spearman), with n − 3 degrees of freedom.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 2000
MIN_TRIALS = 3


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of (B, n) arrays; NaN where a row is constant."""
    xc, yc = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    denom = np.sqrt((xc * xc).sum(1) * (yc * yc).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (xc * yc).sum(1) / denom, np.nan)


def _spearman_rows(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return _rowwise_pearson(stats.rankdata(x[idx], axis=1), stats.rankdata(y[idx], axis=1))


def _pearson_log_rows(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return _rowwise_pearson(np.log(x[idx]), y[idx])


def _kendall_rows(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Kendall τ-b of each resample from the pairwise signs of the original sample.

    A resample that holds example i c_i times has c_i·c_j pairs (i, j); pairs of copies of one
    example are ties and drop out of τ-b. So with S = sign(x_i − x_j)·sign(y_i − y_j),
    τ-b = cᵀSc / √(cᵀ|Sx|c · cᵀ|Sy|c): a matrix product instead of n² work per resample.
    """
    sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    counts = np.zeros(idx.shape)
    np.add.at(counts, (np.arange(len(idx))[:, None], idx), 1)

    def quad(m: np.ndarray) -> np.ndarray:
        return ((counts @ m) * counts).sum(1)

    denom = np.sqrt(quad(np.abs(sx)) * quad(np.abs(sy)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, quad(sx * sy) / denom, np.nan)


@dataclass(frozen=True, slots=True)
class Method:
    """A correlation: the full-sample test (r, p) and its r on bootstrap resamples (rows of idx)."""

    test: Callable[[np.ndarray, np.ndarray], Any]
    rows: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    log_x: bool = False


METHODS: dict[str, Method] = {
    "spearman": Method(stats.spearmanr, _spearman_rows),
    "pearson": Method(stats.pearsonr, _pearson_log_rows, log_x=True),
    "kendall": Method(stats.kendalltau, _kendall_rows),
}


def bootstrap_ci(x: np.ndarray, y: np.ndarray, method: Method, seed: int = BOOTSTRAP_SEED) -> list[float]:
    """Percentile 95 % interval of r over resampled trials (constant resamples skipped)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), (BOOTSTRAP_RESAMPLES, len(x)))
    draws = method.rows(x, y, idx)
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return [math.nan, math.nan]
    low, high = np.percentile(draws, [2.5, 97.5])
    return [float(low), float(high)]


def correlations(measure: np.ndarray, accuracy: np.ndarray) -> dict[str, Any]:
    """The design §6 block: n, then r, p and ci95 per method; only finite, positive Tr(F) used."""
    keep = np.isfinite(measure) & np.isfinite(accuracy) & (measure > 0)
    x, y = measure[keep], accuracy[keep]
    block: dict[str, Any] = {"n": len(x)}
    if len(x) < MIN_TRIALS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return block
    for name, method in METHODS.items():
        result = method.test(np.log(x) if method.log_x else x, y)
        block[name] = {"r": float(result.statistic), "p": float(result.pvalue), "ci95": bootstrap_ci(x, y, method)}
    return block


def _partial_r(x: np.ndarray, y: np.ndarray, z: np.ndarray, rank: bool) -> float:
    """r of x and y after removing a linear fit on z from both (on ranks when ``rank``); NaN if degenerate."""
    if rank:
        x, y, z = (stats.rankdata(v) for v in (x, y, z))
    design = np.column_stack([np.ones(len(z)), z])
    coef, *_ = np.linalg.lstsq(design, np.column_stack([x, y]), rcond=None)
    rx, ry = (np.column_stack([x, y]) - design @ coef).T
    if np.allclose(rx, 0) or np.allclose(ry, 0):
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def partial_correlation(measure: np.ndarray, accuracy: np.ndarray, covariate: np.ndarray, rank: bool) -> dict[str, Any]:
    """Correlation of log measure (or its rank) with accuracy after removing ``covariate``,
    with its p-value (t test, n − 3 degrees of freedom) and a seeded percentile-bootstrap CI."""
    keep = np.isfinite(measure) & np.isfinite(accuracy) & np.isfinite(covariate) & (measure > 0)
    x, y, z = np.log(measure[keep]), accuracy[keep], covariate[keep]
    n = len(x)
    if n < MIN_TRIALS + 1 or np.ptp(z) == 0:
        return {"n": n}
    r = _partial_r(x, y, z, rank)
    if not math.isfinite(r):
        return {"n": n}
    dof = n - 3
    t = r * math.sqrt(dof / max(1e-300, 1 - r * r))
    p = float(2 * stats.t.sf(abs(t), dof))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = []
    for idx in rng.integers(0, n, (BOOTSTRAP_RESAMPLES, n)):
        if np.ptp(z[idx]) > 0:
            draws.append(_partial_r(x[idx], y[idx], z[idx], rank))
    finite = np.array([d for d in draws if math.isfinite(d)])
    ci = [float(v) for v in np.percentile(finite, [2.5, 97.5])] if len(finite) else [math.nan, math.nan]
    return {"n": n, "r": r, "p": p, "ci95": ci}
