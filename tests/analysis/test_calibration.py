"""Calibration of the report's tests on simulated studies, with fixed seeds (deterministic).

The studies are shaped like docs/results.md: 6 learning rates × 3 seed replicas. Test accuracy
saturates in log lr, plus an effect shared by a configuration's replicas, plus seed noise whose
scale differs between configurations; log Tr(F) is a curved function of log lr, plus its own
configuration effect and seed noise. Under the
null, nothing links the two beyond lr. Each test below fails if a method is miscalibrated: the
harness itself is checked by the partial correlation on log lr, which it must flag.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from analysis.stats import correlations
from analysis.within import association

STUDIES = 500
LRS = np.geomspace(0.002, 0.04, 6)
REPLICAS = 3


def saturating(log_lr: np.ndarray) -> np.ndarray:
    return 0.99 - 0.04 * np.exp(-(log_lr - np.log(0.002)))


def study(
    rng: np.random.Generator, within_r: float = 0.0, lrs: np.ndarray = LRS, replicas: int = REPLICAS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(Tr(F), final accuracy, configuration ids, log lr) of one simulated study.

    ``within_r``: the correlation of the seed noises of log Tr(F) and of accuracy (0 = the null).
    """
    groups = np.repeat(np.arange(len(lrs)), replicas)
    log_lr = np.log(lrs)[groups]
    spread = np.exp(rng.normal(0, 0.5, len(lrs)))[groups]  # noise scale differs between configurations
    noise = rng.multivariate_normal([0, 0], [[1, within_r], [within_r, 1]], size=len(groups)) * spread[:, None]
    accuracy = saturating(log_lr) + rng.normal(0, 0.006, len(lrs))[groups] + 0.005 * noise[:, 1]
    curve = 6 - 0.5 * log_lr + 0.3 * (log_lr - np.log(0.01)) ** 2  # not linear in log lr either
    trace = np.exp(curve + rng.normal(0, 0.2, len(lrs))[groups] + 0.3 * noise[:, 0])
    return trace, accuracy, groups, log_lr


def rejection_rate(p_values: list[float]) -> float:
    return float(np.mean(np.array(p_values) <= 0.05))


def _partial_on_log_lr_p(trace: np.ndarray, accuracy: np.ndarray, log_lr: np.ndarray) -> float:
    """The dropped test: Pearson of log Tr(F) and accuracy after a linear fit on log lr, t test."""
    design = np.column_stack([np.ones_like(log_lr), log_lr])
    residuals = np.column_stack([np.log(trace), accuracy])
    residuals -= design @ np.linalg.lstsq(design, residuals, rcond=None)[0]
    r = np.corrcoef(residuals.T)[0, 1]
    dof = len(log_lr) - 3
    return float(2 * stats.t.sf(abs(r) * np.sqrt(dof / (1 - r * r)), dof))


def test_within_configuration_test_holds_its_level_where_the_partial_on_lr_does_not() -> None:
    rng = np.random.default_rng(14)
    within, partial = [], []
    for _ in range(STUDIES):
        trace, accuracy, groups, log_lr = study(rng)
        within.append(association(trace, accuracy, groups, resamples=199, seed=len(within))["p"])
        partial.append(_partial_on_log_lr_p(trace, accuracy, log_lr))
    assert 0.03 <= rejection_rate(within) <= 0.075, rejection_rate(within)
    assert rejection_rate(partial) > 0.075, rejection_rate(partial)  # the harness sees a leaky test


def test_within_configuration_test_has_power_at_a_stated_effect() -> None:
    """Power ≥ 80 % at a within-configuration correlation of −0.8 with 6 configurations × 3 seeds."""
    rng = np.random.default_rng(15)
    p = [association(*study(rng, within_r=-0.8)[:3], resamples=199, seed=i)["p"] for i in range(STUDIES)]
    assert rejection_rate(p) >= 0.8, rejection_rate(p)


@pytest.mark.parametrize("within_r", [0.0, -0.5, -0.8])
def test_within_configuration_interval_covers(within_r: float) -> None:
    """At least 95 % (the jackknife alone: 92.4–93.4 % here), not wildly conservative."""
    rng = np.random.default_rng(16)
    covered = []
    for i in range(STUDIES):
        ci = association(*study(rng, within_r=within_r)[:3], resamples=1, seed=i)["ci95"]
        covered.append(ci[0] <= within_r <= ci[1])
    assert 0.95 <= np.mean(covered) <= 0.995, np.mean(covered)


def test_beyond_validation_test_holds_its_level() -> None:
    """Tr(F) and final accuracy both follow the early validation accuracy, and nothing else links them."""
    rng = np.random.default_rng(17)
    p, plain = [], []
    for i in range(STUDIES):
        trace, accuracy, groups, log_lr = study(rng)
        val = saturating(log_lr) - 0.03 + rng.normal(0, 0.006, len(log_lr))
        accuracy = accuracy + 0.7 * (val - saturating(log_lr))
        trace = trace * np.exp(-40 * (val - saturating(log_lr)))
        p.append(association(trace, accuracy, groups, controls=val, resamples=199, seed=i)["p"])
        plain.append(association(trace, accuracy, groups, resamples=199, seed=i)["p"])
    assert 0.03 <= rejection_rate(p) <= 0.075, rejection_rate(p)
    assert rejection_rate(plain) > 0.15, rejection_rate(plain)  # without the control, Tr(F) does predict


def _configuration_means(rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lrs = np.exp(rng.uniform(np.log(0.002), np.log(0.04), m))  # configurations drawn at random
    return study(rng, lrs=lrs)[:3]


def test_across_configuration_intervals_cover_at_small_n() -> None:
    """95 % intervals of Spearman, Kendall and Pearson (log) on configuration means, m = 6, 12, 30."""
    trace, accuracy, _ = _configuration_means(np.random.default_rng(0), 100_000)
    means = np.column_stack([np.log(trace), accuracy]).reshape(100_000, REPLICAS, 2).mean(1)
    truth = {
        "spearman": stats.spearmanr(*means.T).statistic,
        "kendall": stats.kendalltau(*means.T).statistic,
        "pearson": np.corrcoef(means.T)[0, 1],
    }
    rng = np.random.default_rng(18)
    for m in (6, 12, 30):
        covered = {name: [] for name in truth}
        for _ in range(STUDIES):
            block = correlations(*_configuration_means(rng, m), resamples=1)
            for name, value in truth.items():
                lo, hi = block[name]["ci95"]
                covered[name].append(lo <= value <= hi)
        for name, hits in covered.items():
            assert 0.9 <= np.mean(hits) <= 0.99, (m, name, np.mean(hits))
