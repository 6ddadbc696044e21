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


def inference(used: pd.DataFrame) -> dict[str, Any]:
    """The report's correlations, within_configuration, beyond_early_val, primary and family keys."""
    groups = used["configuration"].to_numpy(int)
    final = used[names.FINAL_TEST_ACCURACY].to_numpy(float)
    measures = [*MEASURES, *(m for m in SPECTRUM_MEASURES if m in used and used[m].notna().any())]
    out: dict[str, Any] = {
        key: {m: correlations(used[m].to_numpy(float), used[target].to_numpy(float), groups) for m in measures}
        for key, target in TARGETS.items()
    }
    out["within_configuration"] = {m: association(used[m].to_numpy(float), final, groups) for m in measures}
    out["beyond_early_val"] = {m: beyond_early_val(used, m, groups) for m in measures}
    out["primary"] = primary(out["correlations"])
    out["family"] = family(out)
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
