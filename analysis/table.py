"""The trials table: one row per child run, early-Fisher measures read from the curves.

``early_fisher_trace`` and ``fisher_peak`` are the smoothed reads of :mod:`analysis.measures`
(with ``_stderr``, ``_epoch`` and ``_spacing`` columns beside them: the spacing is the largest gap
in steps between the points a read interpolates, how densely it was sampled); ``raw_<name>`` are the same measures by the
trainable's raw rules, compared with its logged summary (``logged_<name>``) in ``mismatch``.
``val_accuracy_at_<read>`` is the validation accuracy at the first epoch end at or after the end
of the read's box (its centre + window/2): the practical baseline a pruner would have once every
point behind the read was logged. An earlier control would let Tr(F) see up to half a box more of
the run than the validation accuracy it is tested against.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis import names
from analysis.configurations import SEED, configuration_ids, configuration_keys
from analysis.measures import (
    WINDOW_EPOCHS,
    Read,
    early_fisher_trace,
    fisher_at_epoch,
    fisher_peak,
    smoothed_at,
    smoothed_early,
    smoothed_peak,
)
from analysis.mlflow_reader import StudyData

LR = "train.lr"
COEF = "penalty.coef"
RAW = (names.EARLY_FISHER_TRACE, names.FISHER_PEAK, names.FISHER_PEAK_STEP)  # summaries the raw reads recompute
# With fisher.spectrum: λ_max read like Tr(F), its edge-of-stability product, and the outlier share.
EARLY_LAMBDA_MAX, LAMBDA_MAX_PEAK = "early_lambda_max", "lambda_max_peak"
LAMBDA_MAX_LR_PEAK, OUTLIER_SHARE_AT_PEAK = "lambda_max_lr_peak", "outlier_share_at_peak"
EMPTY = pd.Series(dtype=float)
ACCURACIES = (names.FINAL_TEST_ACCURACY, names.BEST_TEST_ACCURACY, names.FINAL_VAL_ACCURACY)  # from the run's summary
# Under label noise: the last epoch's train accuracy on the noisy and on the clean examples.
FINAL_NOISY, FINAL_CLEAN = f"final_{names.TRAIN_ACCURACY_NOISY}", f"final_{names.TRAIN_ACCURACY_CLEAN}"


def _number(value: object) -> object:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return value


def _reads(curves: dict[str, pd.Series], epsilon: float, window: float) -> dict[str, float]:
    fisher, epoch = curves.get(names.FISHER_TRACE, EMPTY), curves.get(names.EPOCH, EMPTY)
    loss, stderr = curves.get(names.TRAIN_LOSS, EMPTY), curves.get(names.FISHER_TRACE_STDERR)
    val = curves.get(names.VAL_ACCURACY, EMPTY).dropna()
    early = smoothed_early(
        fisher, loss, epoch, epsilon, stderr=stderr, weights=curves.get(names.TRAIN_EXAMPLES), window=window
    )
    peak = smoothed_peak(fisher, epoch, stderr=stderr, window=window)
    row: dict[str, float] = {}
    for name, read, at in ((names.EARLY_FISHER_TRACE, early, "early"), (names.FISHER_PEAK, peak, "peak")):
        row[name] = read.value if read else math.nan
        row[f"{name}_stderr"] = read.stderr if read else math.nan
        row[f"{name}_epoch"] = read.epoch if read else math.nan
        row[f"{name}_spacing"] = read.spacing if read else math.nan
        row[f"val_accuracy_at_{at}"], row[f"val_epoch_at_{at}"] = _val_after(val, epoch, read, window)
    row["reached_epsilon_step"] = early.step if early else math.nan
    row[names.FISHER_PEAK_STEP] = peak.step if peak else math.nan
    raw_early, raw_peak = early_fisher_trace(loss, fisher, epsilon), fisher_peak(fisher, epoch)
    row["raw_early_fisher_trace"] = raw_early[0] if raw_early else math.nan
    row["raw_fisher_peak"] = raw_peak[0] if raw_peak else math.nan
    row["raw_fisher_peak_step"] = raw_peak[1] if raw_peak else math.nan
    if not curves.get(names.FISHER_LAMBDA_MAX, EMPTY).dropna().empty:
        row.update(_spectrum_reads(curves, epsilon, window, peak))
    return row


def _spectrum_reads(curves: dict[str, pd.Series], epsilon: float, window: float, peak: Read | None) -> dict[str, float]:
    """λ_max at the ε crossing and at its own peak (smoothed like Tr(F)); λ_max·lr at its peak;
    λ_max / Tr(F), both smoothed, at the Tr(F) peak's centre."""
    lam, epoch = curves[names.FISHER_LAMBDA_MAX], curves.get(names.EPOCH, EMPTY)
    loss, weights = curves.get(names.TRAIN_LOSS, EMPTY), curves.get(names.TRAIN_EXAMPLES)
    early = smoothed_early(lam, loss, epoch, epsilon, weights=weights, window=window)
    lam_peak = smoothed_peak(lam, epoch, window=window)
    edge = smoothed_peak(curves.get(names.FISHER_LAMBDA_MAX_LR, EMPTY), epoch, window=window)
    row = {
        EARLY_LAMBDA_MAX: early.value if early else math.nan,
        LAMBDA_MAX_PEAK: lam_peak.value if lam_peak else math.nan,
        f"{LAMBDA_MAX_PEAK}_epoch": lam_peak.epoch if lam_peak else math.nan,
        LAMBDA_MAX_LR_PEAK: edge.value if edge else math.nan,
        OUTLIER_SHARE_AT_PEAK: smoothed_at(lam, epoch, peak.epoch, window) / peak.value if peak else math.nan,
    }
    row["val_accuracy_at_lambda_peak"], row["val_epoch_at_lambda_peak"] = _val_after(
        curves.get(names.VAL_ACCURACY, EMPTY).dropna(), epoch, lam_peak, window
    )
    return row


def _val_after(val: pd.Series, epoch: pd.Series, read: Read | None, window: float) -> tuple[float, float]:
    """(val accuracy, epoch) at the first epoch end at or after the end of the read's box."""
    if read is None:
        return math.nan, math.nan
    box_end = epoch[epoch >= read.epoch + window / 2 - 1e-9]
    after = val[val.index >= box_end.index.min()] if not box_end.empty else EMPTY
    if after.empty:
        return math.nan, math.nan
    step = after.index[0]
    return float(after.iloc[0]), float(epoch.get(step, math.nan))


def trials_table(study: StudyData, epsilon: float, epoch_k: float, window: float = WINDOW_EPOCHS) -> pd.DataFrame:
    """Columns of design §6 plus ``configuration`` (an id shared by seed replicas), the reads'
    stderr and epoch, ``fisher_at_epoch_<k>``, ``reached_epsilon_step``, the raw reads, the
    ``logged_<name>`` summaries written by the trainable and ``mismatch``: the raw reads whose
    logged value exists and differs (a bug in one of the two, or a run cut short)."""
    rows = []
    for _, run in study.runs.iterrows():
        curves = study.curves.get(run["run_id"], {})
        row: dict[str, object] = {"trial_id": run["trial_id"], "outcome": run["outcome"]}
        for name in study.searched:
            row[name] = _number(run.get(f"params.{name}"))
        row["seed"] = _number(run.get(f"params.{SEED}"))
        row.update(_reads(curves, epsilon, window))
        fisher, epoch = curves.get(names.FISHER_TRACE, EMPTY), curves.get(names.EPOCH, EMPTY)
        row[f"fisher_at_epoch_{epoch_k:g}"] = fisher_at_epoch(fisher, epoch, epoch_k)
        for name in ACCURACIES:
            row[name] = run.get(f"metrics.{name}", math.nan)
        for column, name in ((FINAL_NOISY, names.TRAIN_ACCURACY_NOISY), (FINAL_CLEAN, names.TRAIN_ACCURACY_CLEAN)):
            if len(curve := curves.get(name, EMPTY).dropna()):
                row[column] = float(curve.iloc[-1])
        mismatched = []
        for name in names.SUMMARY_METRICS:
            logged = run.get(f"metrics.{name}", math.nan)
            row[f"logged_{name}"] = logged
            if name in RAW and not math.isnan(float(logged)) and not _same(logged, row[f"raw_{name}"]):
                mismatched.append(name)
        row["mismatch"] = ",".join(mismatched)
        rows.append(row)
    if not rows:  # a study with no trial yet: the columns, no rows
        reads = _reads({}, epsilon, window)
        columns = ["trial_id", "outcome", "configuration", *study.searched, "seed", *reads]
        columns += [f"fisher_at_epoch_{epoch_k:g}", *ACCURACIES, "mismatch"]
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows)
    table.insert(2, "configuration", configuration_ids(table, configuration_keys(study.searched)))
    return table


def _same(a: object, b: object) -> bool:
    fa, fb = float(a), float(b)  # type: ignore[arg-type]
    if math.isnan(fa) and math.isnan(fb):
        return True
    return math.isclose(fa, fb, rel_tol=1e-9, abs_tol=0.0)
