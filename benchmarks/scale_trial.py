"""The synthetic trial of ``study_scale.py``: no training, the reports of a real one.

:func:`trial_shape` reads what a trial of a study spec reports from fishtune's own code: its
epochs, its steps per epoch (from the data set's training split and batch size) and the steps
at which its Tr(F) schedule (``trainables.fisher_config.LogSchedule``) logs the step curves;
the Fisher penalty adds ``fisher_trace_batch`` at every recomputed step. :func:`epoch_result`
builds one epoch's ``tune.report`` dict with those names and point counts through
``trainables.report.EpochReport`` (the trainable's own contract), with smooth, plausible
values. :func:`synthetic_trainable` reports it once every ``interval_s`` seconds with a small
checkpoint, as the real trainable does once an epoch; :data:`REPORTED_AT` is the time (Unix
s) it called ``tune.report``, the same instant its ``val_accuracy`` point carries in MLflow.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables import report as names
from trainables.report import EpochReport, Outcome, Placement

REPORTED_AT = "bench_reported_at"  # result key: when the trial called tune.report (Unix s)
CHECKPOINT_BYTES = 4096


@dataclass(frozen=True, slots=True)
class TrialShape:
    """What one trial reports: ``epochs`` reports; per epoch the step curves at ``logged[e]``
    and ``fisher_trace_batch`` at ``batch_steps[e]``."""

    epochs: int
    steps_per_epoch: int
    logged: tuple[tuple[int, ...], ...]
    batch_steps: tuple[tuple[int, ...], ...]

    def expected_points(self) -> Counter[str]:
        """Metric points a finished trial holds in MLflow, per name."""
        counts: Counter[str] = Counter({name: sum(len(steps) for steps in self.logged) for name in CURVE_NAMES})
        counts.update(STEP0_NAMES)  # the point at step 0, before training, rides on the first report
        counts[names.FISHER_TRACE_BATCH] = sum(len(steps) for steps in self.batch_steps)
        counts.update({name: self.epochs for name in EPOCH_NAMES})
        counts.update({name: 1 for name in SUMMARY_NAMES})
        return counts


CURVE_NAMES = (
    names.EPOCH,
    names.TRAIN_LOSS,
    names.PENALTY_LOSS,
    names.TRAIN_ACCURACY,
    names.TRAIN_EXAMPLES,
    names.FISHER_TRACE,
    names.FISHER_TRACE_STDERR,
)
STEP0_NAMES = (names.EPOCH, names.FISHER_TRACE, names.FISHER_TRACE_STDERR)
# The epoch metrics of a trial without label noise (the synthetic one has none).
EPOCH_NAMES = tuple(name for name in names.EPOCH_METRICS if name not in names.LABEL_NOISE_METRICS)
SUMMARY_NAMES = (
    names.FINAL_TEST_ACCURACY,
    names.FINAL_VAL_ACCURACY,
    names.BEST_TEST_ACCURACY,
    names.EARLY_FISHER_TRACE,
    names.FISHER_PEAK,
    names.FISHER_PEAK_STEP,
)


def trial_shape(spec: Any) -> TrialShape:
    """The report shape of ``spec``'s trial (a ``study.spec.StudySpec``), from fishtune's code."""
    import torch

    from trainables.data import dataset_info
    from trainables.fisher_config import LogSchedule

    cfg = spec.trial
    n_train = len(cfg.data.load(torch.device("cpu")).train_y)
    batch = cfg.train.batch_size
    steps_per_epoch = math.ceil(n_train / batch)
    cost = cfg.fisher.point_cost(dataset_info(cfg.data.name).num_classes, batch)
    schedule = LogSchedule.resolve(cfg.fisher.schedule, steps_per_epoch, cfg.train.epochs, cost)
    every = cfg.penalty.every if cfg.penalty.kind != "none" else 0
    logged, batch_steps = [], []
    for epoch in range(cfg.train.epochs):
        steps = range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)
        logged.append(tuple(s + 1 for s in steps if schedule.is_logged(s + 1)))
        batch_steps.append(tuple(s for s in steps if every and s % every == 0))
    return TrialShape(cfg.train.epochs, steps_per_epoch, tuple(logged), tuple(batch_steps))


def epoch_result(shape: TrialShape, epoch: int, lr: float, now_s: float, interval_s: float) -> dict[str, Any]:
    """The ``tune.report`` dict of epoch ``epoch`` (1-based) of a trial at ``lr``, reported at ``now_s``."""
    first = epoch == 1
    logged = ((0,) if first else ()) + shape.logged[epoch - 1]
    span = shape.steps_per_epoch * shape.epochs
    start_s = now_s - interval_s
    times = {s: int(1000 * (start_s + interval_s * (s - logged[0]) / max(1, logged[-1] - logged[0]))) for s in logged}
    times[logged[-1]] = int(1000 * now_s)  # the epoch end, logged as the report goes out
    speed = 40 * lr

    def loss(step: int) -> float:
        return 0.1 + 2.2 * math.exp(-speed * step * 10 / span)

    def trace(step: int) -> float:
        x = speed * step * 10 / span
        return 5 + 300 * x * math.exp(-x)

    curves: dict[str, list[tuple[int, float]]] = {name: [] for name in CURVE_NAMES}
    for s in logged:
        for name, value in (
            (names.EPOCH, s / shape.steps_per_epoch),
            (names.TRAIN_LOSS, loss(s)),
            (names.PENALTY_LOSS, 0.01 * trace(s)),
            (names.TRAIN_ACCURACY, 1 - loss(s) / 2.4),
            (names.TRAIN_EXAMPLES, 32.0),
            (names.FISHER_TRACE, trace(s)),
            (names.FISHER_TRACE_STDERR, 0.1 * trace(s)),
        ):
            if s > 0 or name in STEP0_NAMES:
                curves[name].append((s, value))
    curves[names.FISHER_TRACE_BATCH] = [(s, 4 * trace(s)) for s in shape.batch_steps[epoch - 1]]
    step = epoch * shape.steps_per_epoch
    acc = 1 - loss(step) / 2.4
    metrics = {
        names.VAL_ACCURACY: acc,
        names.VAL_LOSS: loss(step),
        names.TEST_ACCURACY: acc - 0.01,
        names.TEST_LOSS: loss(step) + 0.02,
    }
    done = epoch == shape.epochs
    summary = {}
    if done:
        peak_step = max(range(0, span + 1, shape.steps_per_epoch), key=trace)
        summary = {
            names.FINAL_TEST_ACCURACY: acc - 0.01,
            names.FINAL_VAL_ACCURACY: acc,
            names.BEST_TEST_ACCURACY: acc - 0.01,
            names.EARLY_FISHER_TRACE: trace(span // 10),
            names.FISHER_PEAK: trace(peak_step),
            names.FISHER_PEAK_STEP: float(peak_step),
        }
    result = EpochReport(
        epoch=epoch,
        step=step,
        metrics=metrics,
        curves=curves,
        times=times,
        outcome=Outcome.COMPLETED if done else Outcome.RUNNING,
        summary=summary,
    ).to_result(Placement(device="cpu", node_id="synthetic"))
    result[REPORTED_AT] = now_s
    return result


def wait_for_wave(barrier: str, wave: int, trial_id: str, timeout_s: float = 600.0) -> None:
    """Hold the first ``wave`` trials until all have started (on a loaded machine Ray starts
    actors one every second or two; without this the first wave would end before the last began)."""
    folder = Path(barrier)
    (folder / trial_id).touch()
    started = time.monotonic()
    while len(list(folder.iterdir())) < wave and time.monotonic() - started < timeout_s:
        time.sleep(0.2)


def synthetic_trainable(config: dict[str, Any], shape: TrialShape, interval_s: float, barrier: str, wave: int) -> None:
    """Report ``shape.epochs`` epochs, one every ``interval_s`` s of wall time, each with a checkpoint.

    The first ``wave`` trials wait for each other (:func:`wait_for_wave`); each trial's reports
    then keep a phase of its own within the interval (seeded by its trial id)."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    if len(list(Path(barrier).iterdir())) < wave:
        wait_for_wave(barrier, wave, trial_id)
    lr = float(config["train.lr"])
    started = time.time() + interval_s * random.Random(trial_id).random()
    for epoch in range(1, shape.epochs + 1):
        time.sleep(max(0.0, started + epoch * interval_s - time.time()))
        result = epoch_result(shape, epoch, lr, time.time(), interval_s)
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, "state.bin"), "wb") as f:
                f.write(os.urandom(CHECKPOINT_BYTES))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
