"""Whole-split evaluation, and what a trial with label noise reports on its noisy and clean examples:
the training accuracy each epoch, Tr(F) at each point."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables import report
from trainables.config import TrialConfig
from trainables.data import Splits
from trainables.evaluation import epoch_metrics
from trainables.loop import train
from trainables.trial import Trial, probe_indices


class Lookup(nn.Module):
    """Predicts the class stored in the input's first feature: accuracy is fixed by the data."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0].long(), 3).float()


def splits(predicted: list[int], labels: list[int], noisy: list[int]) -> Splits:
    x = torch.tensor(predicted, dtype=torch.float32)[:, None]
    y = torch.tensor(labels)
    return Splits(x, y, x[:2], y[:2], x[:2], y[:2], num_classes=3, noisy_indices=torch.tensor(noisy, dtype=torch.int64))


def test_noisy_and_clean_training_accuracy_against_the_labels_trained_on() -> None:
    # examples 0–2 noisy: the model predicts the noisy label of 0 only; clean 3–6: right on 3, 4 and 5
    metrics = epoch_metrics(Lookup(), splits([1, 0, 0, 2, 1, 0, 0], [1, 2, 1, 2, 1, 0, 2], noisy=[0, 1, 2]))
    assert metrics[report.TRAIN_ACCURACY_NOISY] == pytest.approx(1 / 3)
    assert metrics[report.TRAIN_ACCURACY_CLEAN] == pytest.approx(3 / 4)


def test_without_label_noise_there_is_no_noisy_or_clean_metric() -> None:
    metrics = epoch_metrics(Lookup(), splits([0, 1], [0, 1], noisy=[]))
    assert set(metrics) == {report.VAL_LOSS, report.VAL_ACCURACY, report.TEST_LOSS, report.TEST_ACCURACY}


def test_a_trial_with_label_noise_reports_both_every_epoch() -> None:
    cfg = TrialConfig.from_mapping(
        {
            "data": {"label_noise": 0.25},
            "model": {"name": "mlp", "hidden": 16, "depth": 1},
            "train": {"epochs": 2, "batch_size": 128, "lr": 0.05},
            "fisher": {"samples": 8},
        }
    )
    reports = list(train(cfg, torch.device("cpu")))
    assert len(reports) == 2
    for r in reports:
        assert 0 <= r.metrics[report.TRAIN_ACCURACY_NOISY] <= 1 and 0 <= r.metrics[report.TRAIN_ACCURACY_CLEAN] <= 1
        restored = report.TrialResult.from_result(
            r.to_result(report.Placement())
        ).metrics  # as the driver reads the report
        assert restored[report.TRAIN_ACCURACY_NOISY] == r.metrics[report.TRAIN_ACCURACY_NOISY]
    assert reports[-1].metrics[report.TRAIN_ACCURACY_CLEAN] > reports[-1].metrics[report.TRAIN_ACCURACY_NOISY]


def test_tr_f_over_the_noisy_and_clean_probe_examples_adds_up_to_the_probe_mean() -> None:
    cfg = TrialConfig.from_mapping(
        {
            "data": {"label_noise": 0.25},
            "model": {"name": "mlp", "hidden": 16, "depth": 1},
            "train": {"epochs": 1, "batch_size": 128, "lr": 0.05},
            "fisher": {"samples": 32},
        }
    )
    trial = Trial.set_up(cfg, torch.device("cpu"))
    noisy = int(trial.probe_noisy.sum())
    assert 0 < noisy < 32
    assert trial.probe_noisy.tolist() == [
        i in set(trial.splits.noisy_indices.tolist()) for i in probe_indices(cfg, trial.n_train).tolist()
    ]
    point = trial.measure(step=0)
    whole = point[report.FISHER_TRACE] * 32
    parts = point[report.FISHER_TRACE_NOISY] * noisy + point[report.FISHER_TRACE_CLEAN] * (32 - noisy)
    assert parts == pytest.approx(whole, rel=1e-12)
    assert point[report.FISHER_TRACE_NOISY_STDERR] > 0 and point[report.FISHER_TRACE_CLEAN_STDERR] > 0

    (only,) = train(cfg, torch.device("cpu"))
    steps = [s for s, _ in only.curves[report.FISHER_TRACE]]
    for name in (report.FISHER_TRACE_NOISY, report.FISHER_TRACE_CLEAN):
        assert [s for s, _ in only.curves[name]] == steps  # at every Tr(F) point


def test_without_label_noise_no_noisy_or_clean_tr_f() -> None:
    cfg = TrialConfig.from_mapping({"model": {"name": "mlp", "hidden": 8, "depth": 1}, "fisher": {"samples": 8}})
    assert set(Trial.set_up(cfg, torch.device("cpu")).measure(step=0)) == {
        report.FISHER_TRACE,
        report.FISHER_TRACE_STDERR,
    }
