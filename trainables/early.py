"""The early-phase Fisher measures of design.md §4, computed from logged curves.

A curve is a list of ``(step, value)`` pairs in increasing step order. No interpolation: values
are read at logged steps only.
"""

from __future__ import annotations

Curve = list[tuple[int, float]]


def early_fisher_trace(train_loss: Curve, fisher: Curve, epsilon: float) -> tuple[float, int] | None:
    """Tr(F) at the first logged step ≥ s*, s* = first step whose train loss < ε (paper §3).

    Returns ``(value, step)``, or ``None`` when the loss never fell below ε.
    """
    crossing = next((step for step, loss in train_loss if loss < epsilon), None)
    if crossing is None:
        return None
    return next(((value, step) for step, value in fisher if step >= crossing), None)


def fisher_peak(fisher: Curve, epoch: Curve) -> tuple[float, int] | None:
    """Max Tr(F) over steps whose fractional epoch is ≥ 1.0, and its first step (paper Table 4)."""
    first_step = next((step for step, e in epoch if e >= 1.0), None)
    if first_step is None:
        return None
    after = [(value, step) for step, value in fisher if step >= first_step]
    if not after:
        return None
    peak = max(value for value, _ in after)
    return peak, next(step for value, step in after if value == peak)
