"""The trials table: one row per child run, early-Fisher measures recomputed from the curves."""

from __future__ import annotations

import math

import pandas as pd

from analysis.measures import early_fisher_trace, fisher_at_epoch, fisher_peak
from analysis.store import SUMMARY, StudyData

SEED = "train.seed"
LR = "train.lr"
COEF = "penalty.coef"


def _number(value: object) -> object:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return value


def trials_table(study: StudyData, epsilon: float, epoch_k: float) -> pd.DataFrame:
    """Columns of design §6 plus ``fisher_at_epoch_<k>``, ``reached_epsilon_step``, the
    ``logged_<name>`` summaries written by the trainable and ``mismatch``: the recomputed
    measures whose logged value exists and differs (a bug in one of the two, or a run cut short)."""
    rows = []
    for _, run in study.runs.iterrows():
        curves = study.curves.get(run["run_id"], {})
        fisher = curves.get("fisher_trace", pd.Series(dtype=float))
        loss = curves.get("train_loss", pd.Series(dtype=float))
        epoch = curves.get("epoch", pd.Series(dtype=float))
        row: dict[str, object] = {"trial_id": run["trial_id"], "outcome": run["outcome"]}
        for name in study.searched:
            row[name] = _number(run.get(f"params.{name}"))
        row["seed"] = _number(run.get(f"params.{SEED}"))
        early = early_fisher_trace(loss, fisher, epsilon)
        peak = fisher_peak(fisher, epoch)
        row["early_fisher_trace"] = early[0] if early else math.nan
        row["reached_epsilon_step"] = early[1] if early else math.nan
        row["fisher_peak"] = peak[0] if peak else math.nan
        row["fisher_peak_step"] = peak[1] if peak else math.nan
        row[f"fisher_at_epoch_{epoch_k:g}"] = fisher_at_epoch(fisher, epoch, epoch_k)
        for name in ("final_test_accuracy", "best_test_accuracy", "final_val_accuracy"):
            row[name] = run.get(f"metrics.{name}", math.nan)
        mismatched = []
        for name in SUMMARY:
            logged = run.get(f"metrics.{name}", math.nan)
            row[f"logged_{name}"] = logged
            recomputed = name in ("early_fisher_trace", "fisher_peak", "fisher_peak_step")
            if recomputed and not math.isnan(float(logged)) and not _same(logged, row[name]):
                mismatched.append(name)
        row["mismatch"] = ",".join(mismatched)
        rows.append(row)
    return pd.DataFrame(rows)


def _same(a: object, b: object) -> bool:
    fa, fb = float(a), float(b)  # type: ignore[arg-type]
    if math.isnan(fa) and math.isnan(fb):
        return True
    return math.isclose(fa, fb, rel_tol=1e-9, abs_tol=0.0)
