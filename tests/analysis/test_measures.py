"""Smoothed and raw reads of the early-Fisher measures from logged curves."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.measures import (
    early_fisher_trace,
    fisher_at_epoch,
    fisher_peak,
    smoothed_early,
    smoothed_loss,
    smoothed_peak,
)
from analysis.smoothing import point_average, point_weights

STEPS_PER_EPOCH = 41  # digits: 1 293 training images, batch 32


def trial_curves(epochs: int = 8, seed: int = 0) -> pd.DataFrame:
    """Per-step curves shaped like a digits trial at lr 0.01 logged at every step: Tr(F) sits near 2
    for 3.5 epochs, explodes within half an epoch to ≈ 350 at epoch 4.4, then decays; each point
    has ≈ 10 % noise (128 probe examples, one sampled label each). The loss falls through 0.6 at
    the explosion."""
    rng = np.random.default_rng(seed)
    steps = np.arange(epochs * STEPS_PER_EPOCH + 1)
    epoch = steps / STEPS_PER_EPOCH
    rise = 1 / (1 + np.exp(-(epoch - 3.8) / 0.12))
    clean = 2 + 350 * rise * np.exp(-np.clip(epoch - 4.4, 0, None) / 1.5)
    fisher = clean * np.exp(rng.normal(0, 0.1, len(steps)))
    loss = 0.05 + 2.25 * (1 - rise) + 0.3 * np.exp(-(epoch - 4) / 2) * rise + rng.normal(0, 0.08, len(steps))
    return pd.DataFrame({"epoch": epoch, "fisher": fisher, "stderr": 0.1 * clean, "loss": loss}, index=steps)


def logged_every(curves: pd.DataFrame, k: int, phase: int = 0) -> dict[str, pd.Series]:
    """What a schedule logging every k steps (and at every epoch end) would have logged."""
    steps = curves.index.to_numpy()
    kept = np.unique(np.concatenate([[0], steps[(steps - phase) % k == 0], steps[steps % STEPS_PER_EPOCH == 0]]))
    window = np.searchsorted(kept, steps[1:])  # each step's loss goes to the next logged point
    loss = curves["loss"].iloc[1:].groupby(kept[window]).mean()
    part = curves.loc[kept]
    return {"fisher": part["fisher"], "epoch": part["epoch"], "stderr": part["stderr"], "loss": loss}


@pytest.mark.parametrize("k", [1, 16])  # 4× denser and 4× sparser than every 4 steps
def test_reads_do_not_depend_on_the_logging_density(k: int) -> None:
    curves = trial_curves()
    reference = logged_every(curves, 4)
    peak = smoothed_peak(reference["fisher"], reference["epoch"])
    early = smoothed_early(reference["fisher"], reference["loss"], reference["epoch"], 0.6)
    assert peak is not None and early is not None
    for phase in (0, k // 2):
        other = logged_every(curves, k, phase)
        assert smoothed_peak(other["fisher"], other["epoch"]).value == pytest.approx(peak.value, rel=0.05)
        other_early = smoothed_early(other["fisher"], other["loss"], other["epoch"], 0.6)
        assert other_early.value == pytest.approx(early.value, rel=0.1)


def test_the_raw_peak_grows_with_the_logging_density_and_the_smoothed_one_does_not() -> None:
    curves = trial_curves()
    dense, sparse = logged_every(curves, 1), logged_every(curves, 16)
    assert [smoothed_peak(c["fisher"], c["epoch"]).spacing for c in (dense, sparse)] == [1, 16]
    raw = [fisher_peak(c["fisher"], c["epoch"])[0] for c in (dense, sparse)]
    smooth = [smoothed_peak(c["fisher"], c["epoch"]).value for c in (dense, sparse)]
    assert raw[0] / raw[1] > 1.05  # the max over 16× more noisy points
    assert smooth[0] / smooth[1] == pytest.approx(1, abs=0.05)


def test_the_read_carries_the_points_stderr() -> None:
    curves = logged_every(trial_curves(), 4)
    read = smoothed_peak(curves["fisher"], curves["epoch"], stderr=curves["stderr"])
    t = curves["epoch"].to_numpy()
    where, weights = point_weights(t, read.epoch, 1.0)
    assert weights.sum() == pytest.approx(1.0)
    assert weights @ curves["fisher"].to_numpy()[where] == pytest.approx(read.value)
    local = curves["stderr"].to_numpy()[where]
    assert read.stderr == pytest.approx(weights @ local)  # the probe's error is shared: not reduced
    assert local.min() <= read.stderr <= local.max()
    assert read.step == curves["epoch"].index[np.searchsorted(t, read.epoch)]
    assert read.spacing == 4  # every 4 steps; the epoch ends fall between (41 = 10 × 4 + 1)
    assert math.isnan(smoothed_peak(curves["fisher"], curves["epoch"]).stderr)  # no stderr curve given


def test_box_average_of_a_linear_curve_is_its_value_at_the_centre() -> None:
    t = np.array([0.0, 0.3, 0.35, 1.2, 2.0, 3.0])
    v = 5 + 2 * t
    centres = np.array([0.5, 1.0, 2.5])
    np.testing.assert_allclose(point_average(t, v, centres, 1.0), 5 + 2 * centres)


def test_the_train_loss_is_example_weighted() -> None:
    epoch = pd.Series([0.5, 1.0, 1.5], index=[10, 20, 30])
    loss = pd.Series([1.0, 0.0, 1.0], index=[10, 20, 30])  # one window a single short batch at 0
    examples = pd.Series([32.0, 1.0, 32.0], index=[10, 20, 30])
    weighted = smoothed_loss(loss, epoch, weights=examples, window=1.0)
    assert weighted.loc[0.5] == pytest.approx(32 / 33)  # box [0, 1]: 32 examples at 1, 1 at 0
    assert weighted.loc[0.75] == pytest.approx((32 * 0.5 + 0.5 * 0 + 0) / (16 + 1 * 0.5))
    assert smoothed_loss(loss, epoch, window=1.0).loc[0.5] == pytest.approx(0.5)  # old studies: by epoch span


def test_one_lucky_window_sets_the_raw_crossing_but_not_the_smoothed_one() -> None:
    steps = np.arange(0, 201, 4)
    epoch = pd.Series(steps / 40, index=steps)
    fisher = pd.Series(100.0 + steps, index=steps)
    loss = pd.Series(np.where(steps[1:] == 40, 0.3, 1.0), index=steps[1:])
    loss[steps[1:] >= 160] = 0.2
    examples = pd.Series(np.where(steps[1:] == 40, 14.0, 128.0), index=steps[1:])
    assert early_fisher_trace(loss, fisher, 0.6) == (140.0, 40)
    read = smoothed_early(fisher, loss, epoch, 0.6, weights=examples)
    assert read is not None and read.epoch >= 4.0 and read.value > 250


def test_no_reads_when_the_curves_are_too_short() -> None:
    epoch = pd.Series([0.0, 0.4, 0.8], index=[0, 10, 20])
    fisher = pd.Series([1.0, 2.0, 3.0], index=[0, 10, 20])
    assert smoothed_peak(fisher, epoch) is None  # no whole 1-epoch box centred after epoch 1
    assert smoothed_early(fisher, pd.Series([0.1, 0.1], index=[10, 20]), epoch, 0.5) is None  # nor anywhere
    assert smoothed_early(fisher, pd.Series([0.9, 0.9], index=[10, 20]), epoch, 0.5, window=0.5) is None


def test_raw_reads_edge_cases() -> None:
    steps = [0, 10, 20, 30, 40]
    fisher = pd.Series([1.0, math.nan, 7.0, 7.0, 3.0], index=steps)
    loss = pd.Series([2.0, 0.4, 0.3, 0.2], index=steps[1:])
    epoch = pd.Series([s / 20 for s in steps], index=steps)
    assert early_fisher_trace(loss, fisher, 0.5) == (7.0, 20)  # NaN at the crossing step is skipped
    assert early_fisher_trace(loss, fisher, 0.1) is None  # no crossing
    assert fisher_peak(fisher, epoch) == (7.0, 20)  # a tie: the first step
    assert fisher_peak(fisher, epoch / 100) is None  # epoch 1 never reached
    assert fisher_at_epoch(fisher, epoch, 1.5) == 7.0 and math.isnan(fisher_at_epoch(fisher, epoch, 9))
