"""What the report claims: one pre-specified primary test; every other p-value exploratory.

**Primary test** (fixed before any data, the same for every study): the across-configuration
Spearman ρ between the smoothed early Tr(F) (at the ε crossing) and final test accuracy, on
configuration means, with its permutation p and Fisher z 95 % interval (:mod:`analysis.stats`).
It is the paper's §3 claim (a larger early Tr(F) goes with worse generalisation across
hyperparameters), it is defined whether or not the study has seed replicas, and the early read
is the paper's measure; the peak and the within-configuration questions are sharper but
secondary.

**Family** (exploratory): every other p-value of the report — the other correlations against
final and best test accuracy, the within-configuration tests and the beyond-validation tests —
with Holm's step-down adjustment over the family.

**Incomplete configurations**: a configuration's mean is over the seeds that completed with a
value; where others diverged, failed or never crossed ε, the mean is the survivors', which can
flatter a configuration that mostly collapsed. Every correlation block counts them
(``n_configurations_incomplete``), and the primary test is repeated over the complete
configurations only (``primary.complete_only``) whenever one is incomplete: a sensitivity check,
not a second primary test.

**beyond_early_val**: does Tr(F) predict final test accuracy beyond the validation accuracy a
pruner would have by then (the first epoch end at or after the end of the read's box)? The within-
configuration partial correlation of the deviations of log Tr(F) and final test accuracy given the
deviation of that validation accuracy (:mod:`analysis.within`). Within configurations the three
vary only with the seed, over a small range where a linear control is adequate; across
configurations both Tr(F) and validation accuracy are functions of the hyperparameters and a
linear control on a saturating accuracy leaks the misfit into both residuals, the flaw that made
the partial correlation on log lr reject a true null in 13.8 % of simulated studies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from analysis import names
from analysis.stats import correlations
from analysis.table import EARLY_LAMBDA_MAX, LAMBDA_MAX_PEAK
from analysis.within import association

MEASURES = (names.EARLY_FISHER_TRACE, names.FISHER_PEAK)
SPECTRUM_MEASURES = (EARLY_LAMBDA_MAX, LAMBDA_MAX_PEAK)  # exploratory, where the study logged the spectrum
READ_AT = {
    names.EARLY_FISHER_TRACE: "early",
    names.FISHER_PEAK: "peak",
    EARLY_LAMBDA_MAX: "early",
    LAMBDA_MAX_PEAK: "lambda_peak",
}
PRIMARY_MEASURE, PRIMARY_METHOD = names.EARLY_FISHER_TRACE, "spearman"
PRIMARY_TEST = "across-configuration Spearman ρ with final test accuracy (permutation p, Fisher z 95 % CI)"
TARGETS = {"correlations": names.FINAL_TEST_ACCURACY, "correlations_best": names.BEST_TEST_ACCURACY}


def inference(used: pd.DataFrame, ran: pd.Series) -> dict[str, Any]:
    """The report's correlations, within_configuration, beyond_early_val, primary and family keys.

    ``used``: the completed trials; ``ran``: the number of trials of each configuration id in the
    whole study, whatever their outcome."""
    groups = used["configuration"].to_numpy(int)
    final = used[names.FINAL_TEST_ACCURACY].to_numpy(float)
    measures = [*MEASURES, *(m for m in SPECTRUM_MEASURES if m in used and used[m].notna().any())]
    out: dict[str, Any] = {key: {} for key in TARGETS}
    for key, target in TARGETS.items():
        for m in measures:
            block = correlations(used[m].to_numpy(float), used[target].to_numpy(float), groups)
            complete = complete_rows(used, m, target, ran)
            block["n_configurations_incomplete"] = int(
                used.loc[_has_values(used, m, target) & ~complete, "configuration"].nunique()
            )
            out[key][m] = block
    out["within_configuration"] = {m: association(used[m].to_numpy(float), final, groups) for m in measures}
    out["beyond_early_val"] = {m: beyond_early_val(used, m, groups) for m in measures}
    out["primary"] = primary(out["correlations"])
    if out["correlations"].get(PRIMARY_MEASURE, {}).get("n_configurations_incomplete"):
        out["primary"]["complete_only"] = complete_only(used, ran)
    out["family"] = family(out)
    return out


def _has_values(used: pd.DataFrame, measure: str, target: str) -> pd.Series:
    """Rows with a positive measure and a target: the rows a correlation block uses."""
    return (used[measure] > 0) & np.isfinite(used[measure]) & np.isfinite(used[target])


def complete_rows(used: pd.DataFrame, measure: str, target: str, ran: pd.Series) -> pd.Series:
    """Per row, whether its configuration has every trial it ran in the block (completed, with
    the measure and the target)."""
    kept = _has_values(used, measure, target).groupby(used["configuration"]).sum()
    complete = kept >= ran.reindex(kept.index)
    return used["configuration"].map(complete).fillna(False).astype(bool)


def complete_only(used: pd.DataFrame, ran: pd.Series) -> dict[str, Any]:
    """The primary test over the configurations that lost no trial: estimate, p, ci95, n_configurations."""
    target = TARGETS["correlations"]
    rows = used[complete_rows(used, PRIMARY_MEASURE, target, ran)]
    block = correlations(
        rows[PRIMARY_MEASURE].to_numpy(float), rows[target].to_numpy(float), rows["configuration"].to_numpy(int)
    )
    test = block.get(PRIMARY_METHOD)
    out: dict[str, Any] = {
        "estimate": test["r"] if test else None,
        "p": test["p"] if test else None,
        "ci95": test["ci95"] if test else [None, None],
        "n_configurations": block["n_configurations"],
    }
    if not test:
        out["message"] = "fewer than 3 complete configurations with distinct values"
    return out


def beyond_early_val(used: pd.DataFrame, measure: str, groups: np.ndarray) -> dict[str, Any]:
    """The partial within-configuration association given the validation accuracy at the read."""
    at = READ_AT[measure]
    val = used[f"val_accuracy_at_{at}"].to_numpy(float)
    block = association(used[measure].to_numpy(float), used[names.FINAL_TEST_ACCURACY].to_numpy(float), groups, val)
    epochs = used[f"val_epoch_at_{at}"].dropna()
    out: dict[str, Any] = {
        "estimate": block.get("r"),
        "p": block.get("p"),
        "ci95": block.get("ci95", [None, None]),
        "epoch": float(epochs.median()) if len(epochs) else None,  # median over trials; range below
        "epoch_range": [float(epochs.min()), float(epochs.max())] if len(epochs) else None,
        "n_trials": block["n_trials"],
        "n_configurations": block["n_configurations"],
    }
    if "message" in block:
        out["message"] = block["message"]
    return out


def primary(blocks: dict[str, Any]) -> dict[str, Any]:
    block = blocks.get(PRIMARY_MEASURE, {})
    test = block.get(PRIMARY_METHOD)
    out: dict[str, Any] = {
        "measure": PRIMARY_MEASURE,
        "test": PRIMARY_TEST,
        "estimate": test["r"] if test else None,
        "p": test["p"] if test else None,
        "ci95": test["ci95"] if test else [None, None],
        "n_configurations": block.get("n_configurations", 0),
        "n": block.get("n", 0),
    }
    if not test:
        out["message"] = "fewer than 3 configurations with an early Tr(F) and distinct values: no primary test"
    elif out["ci95"][0] is None:
        out["message"] = "no 95 % interval with fewer than 4 configurations (Fisher z needs m − 3 > 0)"
    return out


def family(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every p-value but the primary's, named by its place in the report, with Holm's adjustment."""
    named: list[tuple[str, float]] = []
    for key in TARGETS:
        for measure, block in report[key].items():
            for method in ("spearman", "pearson", "kendall"):
                if key == "correlations" and (measure, method) == (PRIMARY_MEASURE, PRIMARY_METHOD):
                    continue
                if method in block:
                    named.append((f"{key}.{measure}.{method}", block[method]["p"]))
    for key, field in (("within_configuration", "p"), ("beyond_early_val", "p")):
        for measure, block in report[key].items():
            if block.get(field) is not None:
                named.append((f"{key}.{measure}", block[field]))
    adjusted = holm([p for _, p in named])
    return [{"name": name, "p": p, "p_holm": q} for (name, p), q in zip(named, adjusted, strict=True)]


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order."""
    k = len(pvalues)
    order = np.argsort(pvalues, kind="stable")
    adjusted = np.empty(k)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * pvalues[i]))
        adjusted[i] = running
    return [float(a) for a in adjusted]
