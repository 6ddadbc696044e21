"""The paper's Table 1 as arithmetic: arms of a penalty study set side by side.

An **arm** is one penalty kind at one learning rate. Where a study searched ``penalty.coef``, its
arm is the coefficient with the best mean validation accuracy over its seeds (the paper picks
the coefficient on validation; ties go to the smaller coefficient), and the arm records how many
were tried; otherwise every configuration of the study is its own arm. A coefficient that lost a
seed (diverged, failed, stopped) is chosen only where every coefficient lost one: its mean is
its survivors', and a coefficient that collapses on some seeds is not the one to pick, however
well the others did. The arm's seeds are the replicates: arms are compared by Welch's t on final
test accuracy over their seeds, with Holm's adjustment over every comparison of the table, and
their Tr(F) peaks by the ratio of geometric means with a Welch interval on log peaks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from analysis import names
from analysis.configurations import configuration_keys
from analysis.inference import holm
from analysis.table import COEF, LR

KINDS = {"none": "no penalty", "fisher": "FP", "gp": "GP", "gpx": "GPx", "gpr": "GPr", "vcl": "VCL"}
PEAK = names.FISHER_PEAK
KIND = "penalty.kind"


@dataclass(frozen=True, slots=True)
class Arm:
    label: str
    kind: str
    lr: float
    coef: float | None  # the chosen coefficient (None: no penalty)
    tried: pd.DataFrame  # one row per coefficient tried: coef, n, lost and the means and stds of the columns
    runs: pd.DataFrame  # the completed trials of the chosen configuration

    @property
    def penalised(self) -> bool:
        return self.kind != "none"


def study_arms(table: pd.DataFrame, searched: list[str], params: dict[str, str]) -> list[Arm]:
    """The arms of one study's trials table: statistics over completed trials, the choice of
    coefficient also over the lost ones (a configuration with none completed has no arm).

    The penalty kind is the configuration's where the study searched it, else the study's; an
    arm's label names its kind, its lr and any other searched value, so that no two arms of a
    study share one."""
    keys = [k for k in configuration_keys(searched) if k != COEF]
    others = [k for k in keys if k not in (LR, KIND)]
    groups = table.groupby(keys, dropna=False) if keys else [((), table)]
    arms = []
    for _, every in groups:
        group = every[every["outcome"] == names.COMPLETED]
        if group.empty:
            continue
        lr = float(group[LR].iloc[0]) if LR in group else float(params[LR])
        kind = str(group[KIND].iloc[0]) if KIND in group else params.get(KIND, "none")
        coef = float(params.get(COEF, 0.0))
        tried = _tried(every) if COEF in group else pd.DataFrame()
        runs = group
        if not tried.empty:
            # rounded: the same accuracies summed in another seed order differ in the last bit
            ranked = tried.assign(lost_any=tried["lost"] > 0, val_rank=tried["val_mean"].round(9))
            best = ranked.sort_values(["lost_any", "val_rank", COEF], ascending=[True, False, True]).iloc[0]
            coef, runs = float(best[COEF]), group[group[COEF] == best[COEF]]
        label = ", ".join([f"{KINDS.get(kind, kind)}, lr {lr:g}", *(f"{k} {group[k].iloc[0]}" for k in others)])
        arms.append(Arm(label, kind, lr, coef if kind != "none" else None, tried, runs))
    return arms


def _tried(every: pd.DataFrame) -> pd.DataFrame:
    """Per coefficient: completed seeds ``n``, ``lost`` ones (any other outcome) and the means and
    stds over the completed (a coefficient with none completed has NaN means and ranks last)."""
    rows = []
    for coef, trials in every.groupby(COEF):
        runs = trials[trials["outcome"] == names.COMPLETED]
        row = {COEF: float(coef), "n": len(runs), "lost": len(trials) - len(runs), **_summary(runs)}  # type: ignore[arg-type]
        rows.append(row)
    return pd.DataFrame(rows)


def _summary(runs: pd.DataFrame) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for short, column in (
        ("val", names.FINAL_VAL_ACCURACY),
        ("test", names.FINAL_TEST_ACCURACY),
        ("best", names.BEST_TEST_ACCURACY),
        ("peak", PEAK),
    ):
        values = runs[column].astype(float).dropna()
        out[f"{short}_mean"] = _finite(values.mean())
        out[f"{short}_std"] = _finite(values.std(ddof=1)) if len(values) > 1 else None
    return out


def arms_table(arms: list[Arm]) -> list[dict[str, Any]]:
    """One row per arm: the chosen coefficient, its seeds' means ± stds and a t interval of the
    final test accuracy over the seeds (None with fewer than two seeds or no spread)."""
    rows = []
    for arm in arms:
        test = arm.runs[names.FINAL_TEST_ACCURACY].astype(float).dropna().to_numpy()
        rows.append(
            {
                "arm": arm.label,
                "coef": arm.coef,
                "coefs_tried": len(arm.tried) if not arm.tried.empty else None,
                "n": len(arm.runs),
                **_summary(arm.runs),
                "test_ci95": _t_interval(test),
            }
        )
    return rows


def comparisons(arms: list[Arm]) -> list[dict[str, Any]]:
    """Every penalised arm against every unpenalised one, and each pair of unpenalised arms
    (larger lr first): the difference of mean final test accuracy in points, its Welch 95 %
    interval and p, Holm-adjusted over the table, and the ratio of their geometric-mean Tr(F)
    peaks with its interval."""
    plain = sorted((a for a in arms if not a.penalised), key=lambda a: -a.lr)
    pairs = [(p, b) for p in arms if p.penalised for b in plain]
    pairs += [(a, b) for i, a in enumerate(plain) for b in plain[i + 1 :]]
    rows = [_welch(a, b) for a, b in pairs]
    tested = [i for i, row in enumerate(rows) if row["p"] is not None]
    for i, adjusted in zip(tested, holm([rows[i]["p"] for i in tested]), strict=True):
        rows[i]["p_holm"] = adjusted
    return rows


def _welch(a: Arm, b: Arm) -> dict[str, Any]:
    x = a.runs[names.FINAL_TEST_ACCURACY].astype(float).dropna().to_numpy()
    y = b.runs[names.FINAL_TEST_ACCURACY].astype(float).dropna().to_numpy()
    row: dict[str, Any] = {"a": a.label, "b": b.label, "n_a": len(x), "n_b": len(y), "p": None, "p_holm": None}
    row["difference_points"] = 100 * (x.mean() - y.mean()) if len(x) and len(y) else None
    row["ci95_points"] = None
    row["peak_ratio"], row["peak_ratio_ci95"] = _peak_ratio(a.runs[PEAK], b.runs[PEAK])
    if min(len(x), len(y)) < 2:
        row["note"] = "fewer than two seeds in an arm"
    elif np.ptp(x) == 0 or np.ptp(y) == 0:
        row["note"] = "an arm's seeds all ended at the same accuracy (no spread): Welch's t is undefined"
    else:
        result = stats.ttest_ind(x, y, equal_var=False)
        low, high = result.confidence_interval(0.95)
        row.update(p=float(result.pvalue), ci95_points=[100 * float(low), 100 * float(high)])
    return row


def _peak_ratio(a: pd.Series, b: pd.Series) -> tuple[float | None, list[float] | None]:
    """The ratio of the arms' geometric-mean Tr(F) peaks and its 95 % Welch interval (exp of the
    difference of mean log peaks and of its interval): how far apart two arms' peaks can be,
    given their seeds. The interval is None with fewer than two positive peaks in an arm or no
    spread; the ratio None where an arm has no positive peak."""
    x, y = (np.log(v[v > 0]) for v in (a.astype(float).dropna(), b.astype(float).dropna()))
    if not len(x) or not len(y):
        return None, None
    ratio = math.exp(float(x.mean() - y.mean()))
    if min(len(x), len(y)) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return ratio, None
    low, high = stats.ttest_ind(x, y, equal_var=False).confidence_interval(0.95)
    return ratio, [math.exp(float(low)), math.exp(float(high))]


def _t_interval(values: np.ndarray) -> list[float] | None:
    if len(values) < 2 or np.ptp(values) == 0:
        return None
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return [float(values.mean() - half), float(values.mean() + half)]


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None
