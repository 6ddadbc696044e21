"""The figures' encodings: one colour scale for both panels of fisher_vs_accuracy, readable axes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.plots import fisher_vs_accuracy


def table(lrs: list[float]) -> pd.DataFrame:
    """Four completed trials; the largest lr's trial never crossed ε (no early read)."""
    return pd.DataFrame(
        {
            "outcome": ["completed"] * 4,
            "train.lr": lrs,
            "early_fisher_trace": [180.0, 150.0, 130.0, np.nan],
            "fisher_peak": [300.0, 260.0, 200.0, 150.0],
            "final_test_accuracy": [0.90, 0.92, 0.95, 0.96],
        }
    )


def test_both_panels_and_the_bar_share_one_lr_scale() -> None:
    """Each panel autoscaled its own norm over the points it could draw: with the lr-0.1 trial
    missing on the left, lr 0.01 was yellow there and dark on the right."""
    fig = fisher_vs_accuracy(table([0.01, 0.02, 0.04, 0.1]), {"correlations": {}})
    left, right, bar = fig.axes
    colours = [ax.collections[0].to_rgba(ax.collections[0].get_array())[0] for ax in (left, right)]
    assert np.allclose(colours[0], colours[1])
    assert np.allclose(bar.get_ylim(), (0.01, 0.1))
    fig.canvas.draw()
    labels = [t.get_text() for t in left.get_xticklabels(minor=True) if t.get_text()]
    assert len(labels) >= 2  # Tr(F) between 130 and 180: decade labels alone showed none
    plt.close(fig)


def test_a_constant_learning_rate_gets_no_colour_bar() -> None:
    fig = fisher_vs_accuracy(table([0.01] * 4), {"correlations": {}})
    assert len(fig.axes) == 2
    plt.close(fig)
