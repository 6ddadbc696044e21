"""``fishtune analyze``: do early Fisher peaks predict final test accuracy? (design.md §6)

Reads the study from MLflow only, writes ``trials.csv``, ``report.json``, the plots and
``report.md`` into the output folder, and logs the same files as artifacts of the parent run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from analysis import names, plots
from analysis.configurations import configuration_keys
from analysis.inference import MEASURES, inference, primary
from analysis.markdown import markdown
from analysis.measures import GRID_EPOCHS, WINDOW_EPOCHS
from analysis.mlflow_reader import StudyData, load_study
from analysis.table import COEF, FINAL_CLEAN, FINAL_NOISY, LAMBDA_MAX_PEAK, LR, trials_table

MIN_TRIALS = 3
EXCLUDED = (names.DIVERGED, names.FAILED, names.EARLY_STOPPED)
EPOCH_K = 20.0  # the paper's §5 reads Tr(F) at the end of epoch 20


class NotEnoughTrials(RuntimeError):
    """Fewer than three completed trials: no correlation is reported."""


def resolve_epsilon(study: StudyData, epsilon: float | None) -> float:
    if epsilon is not None:
        return epsilon
    value = study.params.get("fisher.epsilon")
    if value in (None, "None"):
        raise LookupError(f"study {study.name!r}: no fisher.epsilon param on its parent run; pass --epsilon")
    return float(value)


def build_report(
    study: StudyData, table: pd.DataFrame, epsilon: float, window: float = WINDOW_EPOCHS
) -> dict[str, Any]:
    # A canonical order (configuration, then seed), so the seeded permutations do not depend on
    # the order in which trials happened to finish.
    order = [k for k in ("configuration", "seed", "trial_id") if k in table]
    used = table[table["outcome"] == names.COMPLETED].sort_values(order, kind="stable")
    report: dict[str, Any] = {
        "study": study.name,
        "epsilon": epsilon,
        "smoothing": {"window_epochs": window, "grid_epochs": GRID_EPOCHS},
        "n_trials": len(table),
        "n_used": len(used),
        "excluded": excluded(table),
        "not_crossed": [str(t) for t in used.loc[used[names.EARLY_FISHER_TRACE].isna(), "trial_id"]],
        "read_spacing": read_spacing(used),
        "accuracy": {
            "final": "final_test_accuracy (after the last epoch)",
            "best": "best_test_accuracy (max over epochs)",
        },
    }
    if len(used) < MIN_TRIALS:
        report["message"] = f"only {len(used)} completed trial(s); at least {MIN_TRIALS} are needed for correlations"
        report.update(correlations={}, correlations_best={}, within_configuration={}, beyond_early_val={})
        report.update(primary=primary({}), family=[])
        return report
    ran = table.groupby("configuration").size()
    report.update(inference(used, ran))
    keys = configuration_keys(study.searched)
    report["incomplete_configurations"] = incomplete_configurations(table, keys)
    report["aggregates"] = aggregates(used, keys)
    report["importances"] = importances(used, keys)
    return report


def excluded(table: pd.DataFrame) -> dict[str, int]:
    """Trials not used, by outcome: diverged, failed and early-stopped always, and any other
    outcome that is not ``completed`` (e.g. a run still ``running``), so that every trial is
    either used or counted here."""
    counts = {reason: 0 for reason in EXCLUDED}
    for outcome, n in table.loc[table["outcome"] != names.COMPLETED, "outcome"].value_counts().items():
        counts[str(outcome)] = int(n)
    return counts


def incomplete_configurations(table: pd.DataFrame, keys: list[str]) -> list[dict[str, Any]]:
    """The configurations whose means rest on fewer trials than they ran: their searched
    ``values``, ``trials`` run, ``completed``, and the ``lost`` ones by outcome (``not_crossed``:
    completed but never below ε, so missing from the early read only)."""
    out = []
    for _, group in table.groupby("configuration", sort=True):
        lost = group.loc[group["outcome"] != names.COMPLETED, "outcome"].value_counts()
        completed = group[group["outcome"] == names.COMPLETED]
        not_crossed = int(completed[names.EARLY_FISHER_TRACE].isna().sum())
        if lost.empty and not not_crossed:
            continue
        reasons = {str(k): int(v) for k, v in lost.items()} | ({"not_crossed": not_crossed} if not_crossed else {})
        values = {k: group[k].iloc[0] for k in keys}
        out.append({"values": values, "trials": len(group), "completed": len(completed), "lost": reasons})
    return out


def read_spacing(used: pd.DataFrame) -> dict[str, dict[str, int | None]]:
    """Per read, the median and the largest over trials of its ``_spacing`` (the largest gap in
    steps between the points it interpolates): how densely the study's reads were sampled."""
    out: dict[str, dict[str, int | None]] = {}
    for name in (names.EARLY_FISHER_TRACE, names.FISHER_PEAK):
        column = f"{name}_spacing"
        spacing = used[column].dropna() if column in used else pd.Series(dtype=float)
        empty = spacing.empty
        out[name] = {"median": None if empty else int(spacing.median()), "max": None if empty else int(spacing.max())}
    return out


def aggregates(used: pd.DataFrame, keys: list[str]) -> list[dict[str, Any]]:
    """Mean ± std over seeds of the accuracies and the Tr(F) reads (and, under label noise, the
    final train accuracy on the noisy and the clean examples), per configuration."""
    if not keys or used.empty:
        return []
    columns: tuple[str, ...] = (
        names.FINAL_VAL_ACCURACY,
        names.FINAL_TEST_ACCURACY,
        names.BEST_TEST_ACCURACY,
        *MEASURES,
    )
    columns += tuple(c for c in (FINAL_NOISY, FINAL_CLEAN) if c in used)
    grouped = used.groupby(keys, dropna=False)
    out = []
    for values, group in grouped:
        values = values if isinstance(values, tuple) else (values,)
        row: dict[str, Any] = dict(zip(keys, values, strict=True))
        row["n"] = len(group)
        for name in columns:
            row[f"{name}_mean"] = _clean(group[name].mean())
            row[f"{name}_std"] = _clean(group[name].std(ddof=1)) if len(group) > 1 else None
        out.append(row)
    return out


def importances(used: pd.DataFrame, keys: list[str]) -> dict[str, float]:
    """|Spearman ρ| of each searched numeric knob with final test accuracy, normalised to sum 1.

    A rank statistic on the trials table (not a model fit): with the few trials of a CPU study
    a fANOVA forest would mostly fit noise.
    """
    scores = {}
    for key in keys:
        values = pd.to_numeric(used[key], errors="coerce")
        if values.notna().sum() >= MIN_TRIALS and values.nunique() > 1:
            rho = values.corr(used[names.FINAL_TEST_ACCURACY], method="spearman")
            scores[key] = abs(rho) if math.isfinite(rho) else 0.0
    total = sum(scores.values())
    return {k: v / total for k, v in scores.items()} if total > 0 else scores


def _clean(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def write_report(study: StudyData, table: pd.DataFrame, report: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "trials.csv", out / "report.json"]
    table.to_csv(files[0], index=False)
    files[1].write_text(json.dumps(report, indent=2, default=_json_default))
    if report["n_used"] >= MIN_TRIALS:
        figures = {
            "fisher_curves.png": plots.fisher_curves(table, study.curves, list(study.runs["run_id"])),
            "fisher_vs_accuracy.png": plots.fisher_vs_accuracy(table, report),
        }
        if LR in study.searched and COEF in study.searched:
            figures["accuracy_heatmap.png"] = plots.accuracy_heatmap(table)
        if LAMBDA_MAX_PEAK in table and table[LAMBDA_MAX_PEAK].notna().any():
            momentum = _float(study.params.get("train.momentum"))
            run_ids = list(study.runs["run_id"])
            figures["fisher_spectrum.png"] = plots.spectrum_curves(table, study.curves, run_ids, momentum)
        if any(len(c.get(names.TRAIN_ACCURACY_NOISY, ())) for c in study.curves.values()):
            keys = configuration_keys(study.searched)
            run_ids = list(study.runs["run_id"])
            figures["memorisation.png"] = plots.memorisation_curves(table, study.curves, run_ids, keys)
        for name, fig in figures.items():
            fig.savefig(out / name)
            plt.close(fig)
            files.append(out / name)
    files.append(out / "report.md")
    files[-1].write_text(markdown(report, [f.name for f in files if f.suffix == ".png"]))
    return files


def _float(value: str | None) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {value!r}")


def analyze(
    tracking_uri: str, name: str, out: Path, epsilon: float | None = None, window: float = WINDOW_EPOCHS
) -> dict[str, Any]:
    """Load, compute, write, and log the files as artifacts of the study's parent run.

    ``window``: the width in epochs of the box that smooths the curves before the reads."""
    client = MlflowClient(tracking_uri)
    study = load_study(client, name)
    eps = resolve_epsilon(study, epsilon)
    table = trials_table(study, eps, EPOCH_K, window)
    report = build_report(study, table, eps, window)
    for path in write_report(study, table, report, out):
        client.log_artifact(study.parent_run_id, str(path), artifact_path="report")
    return report
