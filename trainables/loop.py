"""The training loop of one trial, as a generator of per-epoch reports (no Ray here).

``train(cfg, device, state)`` yields one :class:`EpochReport` after each epoch's evaluation:
the epoch's metrics, the step-level curves logged since the previous report, and the state
to checkpoint. Passing a report's ``state`` back resumes exactly after that epoch: no step at
or before it is logged again.

Divergence (design.md §4): a non-finite loss or parameter stops the trial at once
(``nonfinite``); a train accuracy (over the epoch) ≤ 1.5/C at the end of an epoch after epoch
``train.collapse_after_epoch`` (default 3) is a network that collapsed without NaN
(``collapse``). Very small learning rates can sit at chance for longer than 3 epochs before
they start to learn; studies of them raise that epoch. The last report of a diverged trial carries the last
finite objective.

Three parts: :class:`trainables.trial.Trial` is what is built once (data, model, penalty,
optimizer, probe, schedule) and measures Tr(F), :class:`_Progress` what a checkpoint saves and
restores, :func:`_train_epoch` one pass over the training split.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from trainables import data as datasets
from trainables import report as names
from trainables.config import TrialConfig
from trainables.early import Curve, early_fisher_trace, fisher_peak
from trainables.evaluation import epoch_metrics, evaluate, finite_model
from trainables.report import EpochReport, Outcome
from trainables.trial import AUGMENT, DATA_ORDER, PENALTY_LABELS, Trial, seeded_generator

HISTORY = (names.TRAIN_LOSS, names.FISHER_TRACE, names.EPOCH)  # the curves the summary reads, kept whole


class _Window:
    """Train statistics accumulated since the previous logged step, weighted by examples.

    Example weights, so that an epoch's short last batch (14 examples on digits) counts for its
    share and not as much as a full batch; ``train_examples`` is logged so that the analysis can
    pool windows exactly when it smooths the loss.
    """

    def __init__(self) -> None:
        self.loss = self.penalty = 0.0
        self.correct = self.examples = 0

    def add(self, loss: float, penalty: float, correct: int, examples: int) -> None:
        self.loss += loss * examples
        self.penalty += penalty * examples
        self.correct += correct
        self.examples += examples

    def means(self) -> dict[str, float]:
        return {
            names.TRAIN_LOSS: self.loss / self.examples,
            names.PENALTY_LOSS: self.penalty / self.examples,
            names.TRAIN_ACCURACY: self.correct / self.examples,
            names.TRAIN_EXAMPLES: float(self.examples),
        }


@dataclass(slots=True)
class _Progress:
    """Where the trial is: the part a checkpoint restores, and the curves and window since the
    last report (which it does not: a resumed trial logs from its checkpoint's step on)."""

    step: int = 0
    epoch: int = 0  # epochs completed
    best_test: float = -math.inf
    history: dict[str, Curve] = field(default_factory=lambda: {name: [] for name in HISTORY})
    last_objective: dict[str, float] = field(default_factory=dict)
    curves: dict[str, Curve] = field(default_factory=dict)
    times: dict[int, int] = field(default_factory=dict)  # step → Unix ms when its first point was logged
    window: _Window = field(default_factory=_Window)

    @classmethod
    def start(cls, trial: Trial) -> _Progress:
        progress = cls()
        progress.log(0, {names.EPOCH: 0.0, **trial.measure(0)})
        before = evaluate(trial.model, trial.splits.val_x, trial.splits.val_y)
        progress.last_objective = {names.VAL_LOSS: before["loss"], names.VAL_ACCURACY: before["accuracy"]}
        return progress

    @classmethod
    def restore(cls, trial: Trial, state: dict[str, Any]) -> _Progress:
        trial.model.load_state_dict(state["model"])
        trial.optimizer.load_state_dict(state["optimizer"])
        trial.penalty.load_state_dict(state["penalty"])
        torch.set_rng_state(state["torch_rng"].cpu())  # the checkpoint may have been mapped to a GPU
        return cls(state["step"], state["epoch"], state["best_test"], state["history"], state["last_objective"])

    def snapshot(self, trial: Trial) -> dict[str, Any]:
        return copy.deepcopy(  # a snapshot: state_dict() tensors are the live parameters
            {
                "model": trial.model.state_dict(),
                "optimizer": trial.optimizer.state_dict(),
                "penalty": trial.penalty.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "step": self.step,
                "epoch": self.epoch,
                "best_test": self.best_test,
                "history": self.history,
                "last_objective": self.last_objective,
            }
        )

    def log(self, point_step: int, values: dict[str, float]) -> None:
        self.times.setdefault(point_step, time.time_ns() // 1_000_000)
        for name, value in values.items():
            self.curves.setdefault(name, []).append((point_step, float(value)))
            if name in self.history:
                self.history[name].append((point_step, float(value)))

    def take_curves(self) -> dict[str, Curve]:
        curves, self.curves = self.curves, {}
        return curves

    def take_times(self) -> dict[int, int]:
        times, self.times = self.times, {}
        return times


def train(cfg: TrialConfig, device: torch.device, state: dict[str, Any] | None = None) -> Iterator[EpochReport]:
    trial = Trial.set_up(cfg, device)
    progress = _Progress.start(trial) if state is None else _Progress.restore(trial, state)
    if state is not None and progress.epoch == cfg.train.epochs:
        # Restored from its last checkpoint (the driver died after Tune took the final report but
        # before it saved that): report the end again, or Tune keeps an older result and the run
        # would be recorded as stopped early. Nothing is trained, and the curves were sent.
        yield _epoch_report(trial, progress, progress.last_objective)
        return
    for epoch in range(progress.epoch, cfg.train.epochs):
        reason, train_acc = _train_epoch(trial, progress, epoch)
        metrics = epoch_metrics(trial.model, trial.splits) if reason is None else {}
        if reason is None and not all(math.isfinite(v) for v in metrics.values()):
            reason = "nonfinite"  # e.g. logits so large that the evaluation loss overflows
        if reason is None:
            progress.best_test = max(progress.best_test, metrics[names.TEST_ACCURACY])
            if epoch + 1 > cfg.train.collapse_after_epoch and train_acc <= 1.5 / trial.num_classes:
                reason = "collapse"
        if reason is not None:
            yield _diverged_report(trial, progress, epoch, reason)
            return
        progress.epoch, progress.last_objective = epoch + 1, metrics
        yield _epoch_report(trial, progress, metrics)


def _train_epoch(trial: Trial, progress: _Progress, epoch: int) -> tuple[str | None, float]:
    """One pass over the training split; returns the divergence reason (if it stopped early)
    and the train accuracy over the epoch (steadier than the last window's)."""
    cfg, model, splits = trial.cfg, trial.model, trial.splits
    model.train()
    order = torch.randperm(trial.n_train, generator=seeded_generator(cfg.train.seed, epoch, DATA_ORDER)).to(
        trial.device
    )
    epoch_correct = 0
    for batch in order.split(cfg.train.batch_size):
        x, y = splits.train_x[batch], splits.train_y[batch]
        if cfg.data.augment:  # training batches only: CE and penalty see the same augmented batch
            x = datasets.augment(x, seeded_generator(cfg.train.seed, progress.step, AUGMENT))
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        pen = trial.penalty(model, x, y, logits, seeded_generator(cfg.train.seed, progress.step, PENALTY_LABELS))
        if trial.penalty.recomputed and trial.penalty.batch_trace is not None:  # at θ after `step` steps
            progress.log(progress.step, {names.FISHER_TRACE_BATCH: trial.penalty.batch_trace})
        trial.optimizer.zero_grad(set_to_none=True)
        (loss + pen).backward()
        trial.optimizer.step()
        progress.step += 1
        if not (math.isfinite(loss.item()) and math.isfinite(pen.item())):
            return "nonfinite", epoch_correct / trial.n_train
        correct = int((logits.argmax(1) == y).sum())
        epoch_correct += correct
        progress.window.add(loss.item(), pen.item(), correct, len(y))
        if trial.schedule.is_logged(progress.step):
            if not finite_model(model, trial.probe_x):
                return "nonfinite", epoch_correct / trial.n_train
            epoch_point = progress.step / trial.steps_per_epoch
            progress.log(
                progress.step, {names.EPOCH: epoch_point, **progress.window.means(), **trial.measure(progress.step)}
            )
            progress.window = _Window()
    return None, epoch_correct / trial.n_train


def _epoch_report(trial: Trial, progress: _Progress, metrics: dict[str, float]) -> EpochReport:
    done = progress.epoch == trial.cfg.train.epochs
    return EpochReport(
        epoch=progress.epoch,
        step=progress.step,
        metrics=metrics,
        curves=progress.take_curves(),
        times=progress.take_times(),
        outcome=Outcome.COMPLETED if done else Outcome.RUNNING,
        summary=_summary(progress, metrics, trial.cfg) if done else {},
        state=progress.snapshot(trial),
    )


def _diverged_report(trial: Trial, progress: _Progress, epoch: int, reason: str) -> EpochReport:
    """The final report of a diverged trial: the last finite objective, no checkpoint."""
    return EpochReport(
        epoch=epoch,
        step=progress.step,
        metrics=dict(progress.last_objective),
        curves=progress.take_curves(),
        times=progress.take_times(),
        outcome=Outcome.DIVERGED,
        diverged_reason=reason,
        summary=_summary(progress, {}, trial.cfg),
    )


def _summary(progress: _Progress, last: dict[str, float], cfg: TrialConfig) -> dict[str, float]:
    out: dict[str, float] = {}
    if names.TEST_ACCURACY in last:
        out[names.FINAL_TEST_ACCURACY] = last[names.TEST_ACCURACY]
        out[names.FINAL_VAL_ACCURACY] = last[names.VAL_ACCURACY]
    if math.isfinite(progress.best_test):
        out[names.BEST_TEST_ACCURACY] = progress.best_test
    history = progress.history
    early = early_fisher_trace(history[names.TRAIN_LOSS], history[names.FISHER_TRACE], cfg.epsilon)
    if early is not None:
        out[names.EARLY_FISHER_TRACE] = early[0]
    peak = fisher_peak(history[names.FISHER_TRACE], history[names.EPOCH])
    if peak is not None:
        out[names.FISHER_PEAK], out[names.FISHER_PEAK_STEP] = peak[0], float(peak[1])
    return out
