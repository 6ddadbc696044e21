"""What a trial reports to the driver: the one definition of the worker → driver boundary.

The trainable turns each :class:`EpochReport` of the loop into the flat dict ``tune.report``
needs (:meth:`EpochReport.to_result`, :func:`failed_result`); the driver (searcher, scheduler,
tracking, progress) reads it back through :meth:`TrialResult.from_result`. Every key of that
dict and every metric name is a constant here; ``analysis/names.py`` keeps its own copy of the
names it reads (analysis imports no trainables), checked against these by a test.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from trainables.early import Curve


class Outcome(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    DIVERGED = "diverged"
    FAILED = "failed"
    EARLY_STOPPED = "early_stopped"  # never reported: the driver's name for a trial its scheduler stopped


# Evaluated once per epoch, on the validation and test splits.
VAL_ACCURACY, VAL_LOSS = "val_accuracy", "val_loss"
TEST_ACCURACY, TEST_LOSS = "test_accuracy", "test_loss"
# With data.label_noise > 0, also on the whole training split, against its (corrupted) labels:
# the examples whose label was replaced (memorisation) and the others, separately.
TRAIN_ACCURACY_NOISY, TRAIN_ACCURACY_CLEAN = "train_accuracy_noisy", "train_accuracy_clean"
LABEL_NOISE_METRICS = (TRAIN_ACCURACY_NOISY, TRAIN_ACCURACY_CLEAN)
EPOCH_METRICS = (VAL_ACCURACY, VAL_LOSS, TEST_ACCURACY, TEST_LOSS, *LABEL_NOISE_METRICS)
OBJECTIVES = (VAL_ACCURACY, VAL_LOSS)  # what a study may optimise (search.metric): never a test metric

# Step-level curves, logged at the steps of the Tr(F) schedule.
EPOCH = "epoch"  # fractional epoch in the curves; epochs completed as a report key
TRAIN_LOSS, PENALTY_LOSS = "train_loss", "penalty_loss"
TRAIN_ACCURACY, TRAIN_EXAMPLES = "train_accuracy", "train_examples"
FISHER_TRACE, FISHER_TRACE_STDERR = "fisher_trace", "fisher_trace_stderr"
FISHER_TRACE_BATCH = "fisher_trace_batch"  # the penalty's own minibatch estimate
FISHER_TRACE_EMPIRICAL = "fisher_trace_empirical"
FISHER_TRACE_LAYER = "fisher_trace.layer."  # prefix of the per-layer Tr(F) curves, then the module path
# With label noise: Tr(F) averaged over the probe examples whose label was replaced, and over the others.
FISHER_TRACE_NOISY, FISHER_TRACE_NOISY_STDERR = "fisher_trace_noisy", "fisher_trace_noisy_stderr"
FISHER_TRACE_CLEAN, FISHER_TRACE_CLEAN_STDERR = "fisher_trace_clean", "fisher_trace_clean_stderr"
FISHER_LAMBDA_MAX, FISHER_LAMBDA_MAX_LR = "fisher_lambda_max", "fisher_lambda_max_lr"  # fisher.spectrum only
FISHER_EIGENVALUE = "fisher_eigenvalue."  # prefix of the top-k curves, then the rank from 1
HESSIAN_TRACE, HESSIAN_TRACE_STDERR = "hessian_trace", "hessian_trace_stderr"  # hessian.trace only
CURVE_METRICS = (
    EPOCH,
    TRAIN_LOSS,
    PENALTY_LOSS,
    TRAIN_ACCURACY,
    TRAIN_EXAMPLES,
    FISHER_TRACE,
    FISHER_TRACE_STDERR,
    FISHER_TRACE_BATCH,
    FISHER_TRACE_EMPIRICAL,
    FISHER_TRACE_NOISY,
    FISHER_TRACE_NOISY_STDERR,
    FISHER_TRACE_CLEAN,
    FISHER_TRACE_CLEAN_STDERR,
    FISHER_LAMBDA_MAX,
    FISHER_LAMBDA_MAX_LR,
    HESSIAN_TRACE,
    HESSIAN_TRACE_STDERR,
)

# The final summary, on the last report only.
FINAL_TEST_ACCURACY, FINAL_VAL_ACCURACY = "final_test_accuracy", "final_val_accuracy"
BEST_TEST_ACCURACY = "best_test_accuracy"
EARLY_FISHER_TRACE = "early_fisher_trace"
FISHER_PEAK, FISHER_PEAK_STEP = "fisher_peak", "fisher_peak_step"
SUMMARY_METRICS = (
    FINAL_TEST_ACCURACY,
    FINAL_VAL_ACCURACY,
    BEST_TEST_ACCURACY,
    EARLY_FISHER_TRACE,
    FISHER_PEAK,
    FISHER_PEAK_STEP,
)

# Keys of the reported dict besides the epoch metrics.
STEP = "step"
OUTCOME = "fishtune_outcome"
DIVERGED_REASON = "fishtune_diverged_reason"
ERROR = "fishtune_error"
DEVICE, DEVICE_NOTE, NODE_ID = "fishtune_device", "fishtune_device_note", "fishtune_node_id"
CURVES, SUMMARY = "curves", "summary"
CURVE_TIMES = "curve_times"  # [(step, Unix time in ms)]: when the trial logged each curve step
MAX_ERROR_CHARS = 5000


def layer_metric(path: str) -> str:
    """The per-layer Tr(F) curve of the module at ``path`` (e.g. ``fisher_trace.layer.fc``)."""
    return FISHER_TRACE_LAYER + path


def eigenvalue_metric(rank: int) -> str:
    """The curve of the ``rank``-th largest eigenvalue of the probe Fisher (1 = λ_max)."""
    return f"{FISHER_EIGENVALUE}{rank}"


def is_curve_metric(name: str) -> bool:
    return name in CURVE_METRICS or name.startswith((FISHER_TRACE_LAYER, FISHER_EIGENVALUE))


def step_metrics(logged: Iterable[str]) -> list[str]:
    """The step-indexed metrics among ``logged`` names, in a fixed order: the curves, the
    per-layer curves by path, then the epoch metrics (columns of a run's ``curves.parquet``)."""
    present = set(logged)
    layers = sorted(name for name in present if name.startswith((FISHER_TRACE_LAYER, FISHER_EIGENVALUE)))
    return [name for name in (*CURVE_METRICS, *layers, *EPOCH_METRICS) if name in present]


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the trial ran: its device, why it is not the assigned one (if so), and its Ray node."""

    device: str = ""
    device_note: str = ""
    node_id: str = ""

    def to_result(self) -> dict[str, str]:
        return {DEVICE: self.device, DEVICE_NOTE: self.device_note, NODE_ID: self.node_id}


@dataclass(slots=True)
class EpochReport:
    """One report of the training loop, after an epoch's evaluation (or its divergence)."""

    epoch: int  # epochs completed
    step: int  # optimizer steps taken
    metrics: dict[str, float]
    curves: dict[str, Curve]  # step-level points logged since the previous report
    outcome: Outcome
    times: dict[int, int] = field(default_factory=dict)  # step → Unix ms of the trial's clock when logged
    diverged_reason: str | None = None
    summary: dict[str, float] = field(default_factory=dict)  # only on the last report
    state: dict[str, Any] = field(default_factory=dict)  # to checkpoint; stays on the worker

    def to_result(self, placement: Placement) -> dict[str, Any]:
        """The dict given to ``tune.report``: plain values only (the outcome as its string)."""
        return {
            **self.metrics,
            EPOCH: self.epoch,
            STEP: self.step,
            OUTCOME: self.outcome.value,
            DIVERGED_REASON: self.diverged_reason or "",
            **placement.to_result(),
            CURVES: self.curves,
            CURVE_TIMES: sorted(self.times.items()),
            SUMMARY: self.summary,
        }


def failed_result(error_text: str, epoch: int, step: int, placement: Placement) -> dict[str, Any]:
    """The last report of a trial whose code raised, at the epoch and step of its last report.

    Ray's searcher and scheduler want the objective keys in every report: NaN, so that no
    scheduler (ASHA) ranks other trials against a value this trial did not reach.
    """
    return {
        VAL_ACCURACY: math.nan,
        VAL_LOSS: math.nan,
        EPOCH: epoch,
        STEP: step,
        OUTCOME: Outcome.FAILED.value,
        ERROR: error_text[-MAX_ERROR_CHARS:],
        DIVERGED_REASON: "",
        **placement.to_result(),
        CURVES: {},
        CURVE_TIMES: [],
        SUMMARY: {},
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class TrialResult:
    """A reported dict read back on the driver. ``outcome`` is ``None`` for a dict the trainable
    did not write (e.g. Tune's empty ``last_result`` of a trial that never reported)."""

    outcome: Outcome | None
    epoch: int = 0
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # the epoch metrics present
    curves: dict[str, Curve] = field(default_factory=dict)
    times: dict[int, int] = field(default_factory=dict)  # step → Unix ms when the trial logged it
    summary: dict[str, float] = field(default_factory=dict)
    diverged_reason: str = ""
    error: str = ""
    placement: Placement = Placement()

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> TrialResult:
        return cls(
            outcome=reported_outcome(result),
            epoch=int(result.get(EPOCH, 0)),
            step=int(result.get(STEP, 0)),
            metrics={k: float(result[k]) for k in EPOCH_METRICS if k in result},
            curves=dict(result.get(CURVES) or {}),
            times={int(step): int(ms) for step, ms in result.get(CURVE_TIMES) or ()},
            summary=dict(result.get(SUMMARY) or {}),
            diverged_reason=str(result.get(DIVERGED_REASON) or ""),
            error=str(result.get(ERROR) or ""),
            placement=Placement(
                str(result.get(DEVICE) or ""), str(result.get(DEVICE_NOTE) or ""), str(result.get(NODE_ID) or "")
            ),
        )

    @property
    def repeats_older_values(self) -> bool:
        """A diverged or failed report carries an older epoch's (or placeholder) objective."""
        return self.outcome in (Outcome.DIVERGED, Outcome.FAILED)


def reported_outcome(result: Mapping[str, Any] | None) -> Outcome | None:
    """The outcome a reported dict (or a searcher's summary of one) carries, if any."""
    value = (result or {}).get(OUTCOME)
    return Outcome(value) if value else None
