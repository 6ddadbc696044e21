"""Configurations, the statistical unit: trials that share every searched value but the seed.

Seed replicas of one configuration share its hyperparameters, so they are not independent
evidence about how Tr(F) relates to accuracy across hyperparameters; the across-configuration
statistics use one point per configuration (its mean), the within-configuration ones use the
replicas' deviations from their configuration's mean.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SEED = "train.seed"


def configuration_keys(searched: list[str]) -> list[str]:
    """The searched dotted names that define a configuration (all but the seed)."""
    return [name for name in searched if name != SEED]


def configuration_ids(table: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """An integer per row, equal for rows that share every key's value (0 for all when no keys)."""
    if not keys:
        return np.zeros(len(table), dtype=int)
    columns = table[keys].astype(str)  # NaN and mixed types compare as their text
    return columns.groupby(keys, sort=True).ngroup().to_numpy(int)


def group_means(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Mean of ``values`` (N,) or (N, p) per group, in the order of ``np.unique(groups)``."""
    codes = np.unique(groups, return_inverse=True)[1]
    counts = np.bincount(codes).astype(float)
    sums = np.zeros((len(counts), *values.shape[1:]))
    np.add.at(sums, codes, values)
    return sums / counts.reshape(-1, *([1] * (values.ndim - 1)))


def deviations(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``values`` minus their group's mean (same shape)."""
    codes = np.unique(groups, return_inverse=True)[1]
    return values - group_means(values, groups)[codes]
