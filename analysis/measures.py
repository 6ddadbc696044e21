"""Early-phase Fisher measures recomputed from a trial's logged curves (design.md §4 rules).

Curves are pandas Series indexed by optimizer step. No interpolation anywhere: every value is
read at a logged step. ``early_fisher_trace``: let s* be the first logged step whose train loss
is below ε; the value is the first logged Tr(F) at a step ≥ s* (absent when the loss never
crosses ε). ``fisher_peak``: the maximum Tr(F) over steps whose fractional epoch is ≥ 1.0, and
``fisher_peak_step`` its first step. A NaN point is not a measurement and is skipped.
``fisher_at_epoch``: the first logged Tr(F) at or after the
end of epoch k (the paper's §5 uses k = 20).
"""

from __future__ import annotations

import math

import pandas as pd


def early_fisher_trace(train_loss: pd.Series, fisher: pd.Series, epsilon: float) -> tuple[float, int] | None:
    fisher = fisher.dropna()
    below = train_loss[train_loss < epsilon]
    if below.empty:
        return None
    after = fisher[fisher.index >= below.index.min()]
    if after.empty:
        return None
    return float(after.iloc[0]), int(after.index[0])


def fisher_peak(fisher: pd.Series, epoch: pd.Series) -> tuple[float, int] | None:
    past_first = epoch[epoch >= 1.0]
    if past_first.empty:
        return None
    window = fisher[fisher.index >= past_first.index.min()].dropna()
    if window.empty:
        return None
    return float(window.max()), int(window.idxmax())


def fisher_at_epoch(fisher: pd.Series, epoch: pd.Series, k: float) -> float:
    reached = epoch[epoch >= k]
    if reached.empty:
        return math.nan
    after = fisher.dropna()
    after = after[after.index >= reached.index.min()]
    return float(after.iloc[0]) if not after.empty else math.nan
