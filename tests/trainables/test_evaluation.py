"""Whole-split evaluation: the epoch metrics, and the noisy/clean training accuracy under label noise."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables import report
from trainables.config import TrialConfig
from trainables.data import Splits
from trainables.evaluation import epoch_metrics
from trainables.loop import train


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
