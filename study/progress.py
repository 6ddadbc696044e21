"""Console progress: one line per finished trial, instead of Ray's tables."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ray.tune import Callback
from ray.tune.experiment import Trial

from study.tracking import error_summary, trial_outcome
from trainables.config import TrialConfig
from trainables.report import FISHER_PEAK, TEST_ACCURACY, VAL_ACCURACY, Outcome, TrialResult


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class ProgressPrinter(Callback):
    def __init__(self, searched: list[str], total: int, already_done: int = 0, out: TextIO | None = None) -> None:
        self.searched = searched
        self.total = total
        self.done = already_done
        self.out = out
        self._started: dict[str, float] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "out": None}

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._started.setdefault(trial.trial_id, time.monotonic())

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        outcome = trial_outcome(trial, errored=False)
        self._line(trial, outcome)
        if outcome is Outcome.FAILED:  # the trainable reported its own error (not retried)
            self._print_error(trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._line(trial, Outcome.FAILED)
        self._print_error(trial)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        node = trial.last_result.get("node_ip") or "unknown node"
        checkpoint = trial.latest_checkpoint_result
        start = (
            f"its checkpoint of epoch {TrialResult.from_result(checkpoint.metrics).epoch}" if checkpoint else "scratch"
        )
        self._print(
            f"    {trial.trial_id} lost its worker or hit a transient error on {node} "
            f"(failure {trial.run_metadata.num_failures}); "
            f"restarting from {start}"
        )

    def _print_error(self, trial: Trial) -> None:
        self._print("    " + error_summary(trial).strip().replace("\n", "\n    "))

    def _line(self, trial: Trial, outcome: Outcome) -> None:
        self.done += 1
        r = TrialResult.from_result(trial.last_result)
        flat = TrialConfig.from_tune(trial.config).flat()
        params = " ".join(f"{k}={format_value(flat[k])}" for k in self.searched)
        val, test = (format_value(r.metrics.get(k, float("nan"))) for k in (VAL_ACCURACY, TEST_ACCURACY))
        peak = r.summary.get(FISHER_PEAK)
        peak_text = f" TrF_peak={format_value(peak)}" if peak is not None else ""
        elapsed = time.monotonic() - self._started.get(trial.trial_id, time.monotonic())
        self._print(
            f"[{self.done}/{self.total}] {trial.trial_id} {outcome.value:<13} {params}  "
            f"val_acc={val} test_acc={test}{peak_text}  ({r.epoch} epochs, {elapsed:.0f} s)"
        )

    def _print(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)
