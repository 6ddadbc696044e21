"""The trial-report contract: the dict ``tune.report`` gets, read back on the driver."""

from __future__ import annotations

import math
import time

import torch

from trainables import report
from trainables.config import TrialConfig
from trainables.loop import train
from trainables.report import EpochReport, Outcome, Placement, TrialResult


def test_an_epoch_report_reads_back_as_it_was_written() -> None:
    sent = EpochReport(
        epoch=2,
        step=20,
        metrics={"val_accuracy": 0.5, "val_loss": 1.2, "test_accuracy": 0.4, "test_loss": 1.3},
        curves={"fisher_trace": [(10, 3.0), (20, 2.5)], "fisher_trace.layer.fc": [(10, 1.0)]},
        outcome=Outcome.DIVERGED,
        times={10: 1_700_000_000_000, 20: 1_700_000_000_250},
        diverged_reason="nonfinite",
        summary={"fisher_peak": 3.0},
        state={"step": 20},
    )
    result = sent.to_result(Placement("cuda:0", "note", "node-1"))
    assert type(result["fishtune_outcome"]) is str  # plain values cross the boundary
    assert "state" not in result
    back = TrialResult.from_result({**result, "node_ip": "10.0.0.1", "training_iteration": 2})
    assert back == TrialResult(
        outcome=Outcome.DIVERGED,
        epoch=2,
        step=20,
        metrics=sent.metrics,
        curves=sent.curves,
        times=sent.times,
        summary=sent.summary,
        diverged_reason="nonfinite",
        placement=Placement("cuda:0", "note", "node-1"),
    )
    assert back.repeats_older_values


def test_a_failed_result_reads_back_with_its_error_and_no_value() -> None:
    back = TrialResult.from_result(report.failed_result("x" * 6000, 3, 30, Placement("cpu")))
    assert back.outcome is Outcome.FAILED and (back.epoch, back.step) == (3, 30)
    assert len(back.error) == report.MAX_ERROR_CHARS and back.repeats_older_values
    assert all(math.isnan(back.metrics[k]) for k in (report.VAL_ACCURACY, report.VAL_LOSS))


def test_a_result_the_trainable_did_not_write_has_no_outcome() -> None:
    assert TrialResult.from_result({}).outcome is None
    assert report.reported_outcome(None) is None
    assert report.reported_outcome({"fishtune_outcome": "completed"}) is Outcome.COMPLETED


def test_every_curve_the_loop_logs_is_a_curve_metric() -> None:
    cfg = TrialConfig.from_mapping(
        {
            "model": {"name": "mlp", "hidden": 16, "depth": 1},
            "train": {"epochs": 1, "batch_size": 128, "lr": 0.05},
            "fisher": {"samples": 16, "per_layer": True, "labels": "empirical"},
            "penalty": {"kind": "fisher", "coef": 0.01},
        }
    )
    (only,) = train(cfg, torch.device("cpu"))
    logged = set(only.curves)
    assert any(name.startswith(report.FISHER_TRACE_LAYER) for name in logged)
    assert all(report.is_curve_metric(name) for name in logged), logged
    assert set(report.step_metrics(logged)) == logged
    assert set(only.metrics) == set(report.EPOCH_METRICS) - set(report.LABEL_NOISE_METRICS)  # no label noise here
    assert set(only.summary) <= set(report.SUMMARY_METRICS)


def test_every_logged_step_carries_the_trials_own_wall_time() -> None:
    cfg = TrialConfig.from_mapping(
        {
            "model": {"name": "mlp", "hidden": 16, "depth": 1},
            "train": {"epochs": 2, "batch_size": 128, "lr": 0.05},
            "fisher": {"samples": 16},
        }
    )
    started = time.time() * 1000
    first, second = train(cfg, torch.device("cpu"))
    for epoch in (first, second):
        steps = {step for curve in epoch.curves.values() for step, _ in curve}
        assert set(epoch.times) == steps
        assert started <= min(epoch.times.values()) <= max(epoch.times.values()) <= time.time() * 1000
        ordered = [epoch.times[s] for s in sorted(steps)]
        assert ordered == sorted(ordered)
    assert max(first.times.values()) <= min(second.times.values())
    back = TrialResult.from_result(second.to_result(Placement("cpu")))
    assert back.times == second.times


def test_step_metrics_keep_layers_and_drop_the_summary() -> None:
    logged = ["fisher_trace.layer.b", "val_loss", "fisher_peak", "fisher_trace", "fisher_trace.layer.a"]
    assert report.step_metrics(logged) == ["fisher_trace", "fisher_trace.layer.a", "fisher_trace.layer.b", "val_loss"]
