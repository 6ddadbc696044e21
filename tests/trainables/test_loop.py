"""The training loop: reports, schedule, divergence, exact resume from a checkpoint state."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from trainables.config import TrialConfig
from trainables.loop import EpochReport, train
from trainables.schema import ConfigError, unflatten

TINY: dict[str, Any] = {
    "model": {"name": "mlp", "hidden": 16, "depth": 1},
    "train": {"epochs": 3, "batch_size": 128, "lr": 0.05},
    "fisher": {"samples": 16, "schedule": {"dense_until_epoch": 1, "dense_every": 2, "sparse_every": 5}},
    "penalty": {"kind": "fisher", "coef": 0.01, "recompute_every": 3},
}


def config(**overrides: Any) -> TrialConfig:
    flat = TrialConfig.from_mapping(TINY).flat() | overrides
    return TrialConfig.from_mapping(unflatten(flat))


def run(cfg: TrialConfig, state: dict[str, Any] | None = None) -> list[EpochReport]:
    return list(train(cfg, torch.device("cpu"), state))


def test_one_report_per_epoch_with_metrics_curves_and_summary() -> None:
    reports = run(config())
    assert [r.epoch for r in reports] == [1, 2, 3]
    assert [r.outcome for r in reports] == ["running", "running", "completed"]
    steps_per_epoch = reports[0].step
    assert steps_per_epoch == math.ceil(1293 / 128)
    for r in reports:
        assert set(r.metrics) == {"val_loss", "val_accuracy", "test_loss", "test_accuracy"}
    first = reports[0].curves
    assert first["fisher_trace"][0][0] == 0  # Tr(F) at step 0
    assert [s for s, _ in first["train_loss"]] == [2, 4, 6, 8, 10, 11]  # dense every 2, epoch end
    assert [s for s, _ in reports[1].curves["train_loss"]] == [15, 20, 22]  # sparse every 5, epoch end
    batch_steps = [s for r in reports for s, _ in r.curves["fisher_trace_batch"]]
    assert batch_steps == list(range(0, reports[-1].step, 3))  # once per recomputation, at its own step
    assert set(reports[-1].summary) >= {"final_test_accuracy", "best_test_accuracy", "fisher_peak", "fisher_peak_step"}
    assert reports[-1].summary["final_test_accuracy"] == reports[-1].metrics["test_accuracy"]


def test_resume_from_a_state_is_exact_and_logs_no_step_twice() -> None:
    cfg = config()
    straight = run(cfg)
    partial = run(config(**{"train.epochs": 3}))[:2]
    resumed = run(cfg, partial[-1].state)
    assert [r.epoch for r in resumed] == [3]
    assert resumed[0].metrics == straight[-1].metrics
    assert min(s for s, _ in resumed[0].curves["fisher_trace"]) > partial[-1].step
    assert resumed[0].curves == straight[-1].curves
    assert resumed[0].summary == straight[-1].summary


def test_a_trial_restored_from_its_final_checkpoint_reports_its_end_again() -> None:
    """It returned without a report, and Tune kept whatever older result its saved state held."""
    cfg = config()
    straight = run(cfg)
    (again,) = run(cfg, straight[-1].state)
    assert again.outcome == "completed" and again.epoch == straight[-1].epoch and again.step == straight[-1].step
    assert again.summary == straight[-1].summary and again.metrics == straight[-1].metrics
    assert again.curves == {}  # sent with the original report: nothing logged twice


def test_huge_lr_diverges_nonfinite_with_last_finite_objective() -> None:
    reports = run(config(**{"train.lr": 1e12, "penalty.kind": "none", "penalty.coef": 0.0}))
    last = reports[-1]
    assert last.outcome == "diverged" and last.diverged_reason == "nonfinite"
    assert math.isfinite(last.metrics["val_accuracy"]) and math.isfinite(last.metrics["val_loss"])
    assert not last.state  # nothing to checkpoint


@pytest.mark.parametrize("every", [1, 3])
def test_a_fisher_penalty_run_that_blows_up_is_diverged_not_failed(every: int) -> None:
    """Its label draw met NaN probabilities and raised: the trial was recorded as failed."""
    overrides = {"train.lr": 1e12, "train.batch_size": 32, "fisher.schedule.dense_until_epoch": 0}
    reports = run(config(**overrides, **{"penalty.recompute_every": every}))  # no point checks it before the penalty
    assert reports[-1].outcome == "diverged" and reports[-1].diverged_reason == "nonfinite"


def test_collapse_without_nan_is_diverged() -> None:
    """A network at chance accuracy after epoch 3 is diverged even if every loss is finite."""
    cfg = config(**{"train.epochs": 5, "train.lr": 1e-9, "penalty.kind": "none", "penalty.coef": 0.0})
    reports = run(cfg)
    train_acc = reports[-1].curves["train_accuracy"][-1][1]
    if train_acc > 0.15:
        pytest.fail(f"the untrained tiny MLP should sit near chance, got train accuracy {train_acc}")
    assert reports[-1].outcome == "diverged" and reports[-1].diverged_reason == "collapse"
    assert reports[-1].epoch == 3  # detected at the end of epoch 4 (index 3), after epoch 3


def test_same_seed_same_run_other_seed_other_run() -> None:
    a, b = run(config()), run(config())
    c = run(config(**{"train.seed": 1}))
    assert a[-1].metrics == b[-1].metrics
    assert a[-1].curves["fisher_trace"] != c[-1].curves["fisher_trace"]


def test_per_layer_and_empirical_traces_are_logged_when_asked() -> None:
    cfg = config(**{"fisher.per_layer": True, "fisher.labels": "empirical", "train.epochs": 1})
    curves = run(cfg)[0].curves
    layers = {k for k in curves if k.startswith("fisher_trace.layer.")}
    assert layers == {"fisher_trace.layer.1", "fisher_trace.layer.3"}  # the MLP's two Linear layers
    for (_, total), *parts in zip(curves["fisher_trace"], *(curves[k] for k in sorted(layers)), strict=True):
        assert sum(v for _, v in parts) == pytest.approx(total, rel=1e-6)  # float32 sums
    assert [s for s, _ in curves["fisher_trace_empirical"]] == [s for s, _ in curves["fisher_trace"]]


def test_collapse_epoch_is_configurable() -> None:
    cfg = config(**{"train.epochs": 5, "train.lr": 1e-9, "penalty.kind": "none", "penalty.coef": 0.0})
    patient = run(TrialConfig.from_mapping(unflatten(cfg.flat() | {"train.collapse_after_epoch": 5})))
    assert [r.outcome for r in patient][-1] == "completed"


def test_budgeted_schedule_spreads_the_affordable_points_over_the_dense_window() -> None:
    from trainables.fisher_config import LogSchedule, ScheduleConfig

    # 10 epochs × 40 steps = 400 steps, plus 11 points (step 0, epoch ends) of 4 steps each:
    # 444 steps; 10 % of them buys 44.4 / 4 = 11.1 more points, spread over the dense window of
    # 2 epochs (80 steps): one every ⌈7.2⌉ = 8 steps.
    schedule = LogSchedule.resolve(ScheduleConfig(dense_until_epoch=2, budget=0.1), 40, 10, point_cost_steps=4.0)
    logged = [s for s in range(401) if schedule.is_logged(s)]
    assert logged[:11] == [0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80]
    assert logged[11:] == list(range(120, 401, 40))  # then epoch ends only
    extra = [s for s in logged if s % 40]
    assert len(extra) * 4.0 <= 0.1 * (400 + 11 * 4.0)
    quadruple = LogSchedule.resolve(ScheduleConfig(dense_until_epoch=2, budget=0.4), 40, 10, point_cost_steps=4.0)
    assert quadruple.dense_every == 2  # 4× the budget, 4× the density
    explicit = LogSchedule.resolve(ScheduleConfig(dense_every=3, sparse_every=7), 40, 10, point_cost_steps=4.0)
    assert (explicit.dense_every, explicit.sparse_every) == (3, 7)


def test_point_cost_counts_a_forward_and_one_row_per_label_set() -> None:
    from trainables.fisher_config import FORWARD_COST, ROW_COST, FisherConfig

    per_example = {"exact": 10, "empirical": 11}
    for labels, rows in per_example.items():
        cost = FisherConfig(samples=64, labels=labels).point_cost(num_classes=10, batch_size=32)  # type: ignore[arg-type]
        assert cost == pytest.approx(2 * (FORWARD_COST + ROW_COST * rows))
    assert FisherConfig(samples=64, labels="sampled", label_samples=4).point_cost(10, 32) == pytest.approx(
        2 * (FORWARD_COST + ROW_COST * 4)
    )


def test_train_loss_is_example_weighted_and_window_sizes_are_logged() -> None:
    reports = run(config())
    examples = dict(reports[0].curves["train_examples"])
    n_train = sum(examples.values())  # the windows of an epoch cover the training split once
    assert n_train in (1293, 1294)  # 90 % of the 1437 non-test digits
    assert examples[2] == 256.0 and examples[11] == n_train - 10 * 128  # step 11: the short last batch alone


@pytest.mark.parametrize("labels", ["top", "exact", "sampled"])
def test_fisher_estimator_follows_the_spec(labels: str) -> None:
    extra = {"fisher.label_samples": 3} if labels == "sampled" else {}
    reports = run(config(**{"fisher.labels": labels, "train.epochs": 1, **extra}))
    values = [v for _, v in reports[0].curves["fisher_trace"]]
    assert all(math.isfinite(v) and v > 0 for v in values)


@pytest.mark.parametrize(("kind", "every"), [("fisher", 10), ("gp", 10), ("vcl", 1)])
def test_recompute_every_defaults_to_each_penalty_paper(kind: str, every: int) -> None:
    from trainables.config import PenaltyConfig

    assert PenaltyConfig(kind=kind, coef=0.1).every == every
    assert PenaltyConfig(kind=kind, coef=0.1, recompute_every=3).every == 3


@pytest.mark.parametrize("labels", ["top", "exact", "sampled"])
def test_spectrum_is_logged_with_every_tr_f_point_from_the_same_matrix(labels: str) -> None:
    plain = run(config(**{"fisher.labels": labels, "train.epochs": 1}))[0].curves
    curves = run(config(**{"fisher.labels": labels, "train.epochs": 1, "fisher.spectrum.k": 3}))[0].curves
    steps = [p[0] for p in curves["fisher_trace"]]
    assert steps == [p[0] for p in plain["fisher_trace"]]
    for rank in (1, 2, 3):
        assert [p[0] for p in curves[f"fisher_eigenvalue.{rank}"]] == steps
    trace = [p[1] for p in curves["fisher_trace"]]
    # the same labels as without the spectrum, and Tr(F) from the spectrum's own Gram matrix
    assert trace == pytest.approx([p[1] for p in plain["fisher_trace"]], rel=1e-5)
    lam = [[p[1] for p in curves[f"fisher_eigenvalue.{rank}"]] for rank in (1, 2, 3)]
    assert all(a >= b >= c > 0 for a, b, c in zip(*lam, strict=True))
    assert all(top <= t for top, t in zip(lam[0], trace, strict=True))  # λ_max ≤ Tr(F)
    assert [p[1] for p in curves["fisher_lambda_max"]] == lam[0]
    assert [p[1] for p in curves["fisher_lambda_max_lr"]] == pytest.approx([v * 0.05 for v in lam[0]], rel=1e-12)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.seed": -1}, r"^train\.seed: must be an integer ≥ 0, got -1"),
        ({"data.seed": -2}, r"^data\.seed: must be an integer ≥ 0, got -2"),
        ({"penalty.kind": "vcl", "train.batch_size": 8}, r"^train\.batch_size: must be ≥ 10 with penalty\.kind: vcl"),
    ],
)
def test_values_every_trial_would_fail_on_are_refused_when_the_spec_is_read(
    overrides: dict[str, Any], message: str
) -> None:
    """A negative seed failed every trial (SeedSequence refuses it); VCL on batches under its two
    subsets of 5 added nothing at all."""
    with pytest.raises(ConfigError, match=message):
        config(**overrides)
