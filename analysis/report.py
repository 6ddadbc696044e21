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

from analysis import plots
from analysis.stats import MIN_TRIALS, correlations, partial_correlation
from analysis.store import StudyData, load_study
from analysis.table import COEF, LR, trials_table

MEASURES = ("early_fisher_trace", "fisher_peak")
EXCLUDED = ("diverged", "failed", "early_stopped")
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


def build_report(study: StudyData, table: pd.DataFrame, epsilon: float) -> dict[str, Any]:
    # A canonical order (configuration, then seed), so the seeded bootstrap does not depend on
    # the order in which trials happened to finish.
    keys = [k for k in (*study.searched, "seed") if k in table]
    used = table[table["outcome"] == "completed"].sort_values([*keys, "trial_id"], kind="stable")
    report: dict[str, Any] = {
        "study": study.name,
        "epsilon": epsilon,
        "n_trials": len(table),
        "n_used": len(used),
        "excluded": {reason: int((table["outcome"] == reason).sum()) for reason in EXCLUDED},
        "not_crossed": [str(t) for t in used.loc[used["early_fisher_trace"].isna(), "trial_id"]],
        "accuracy": {
            "final": "final_test_accuracy (after the last epoch)",
            "best": "best_test_accuracy (max over epochs)",
        },
    }
    if len(used) < MIN_TRIALS:
        report["message"] = f"only {len(used)} completed trial(s); at least {MIN_TRIALS} are needed for correlations"
        report["correlations"] = {}
        return report
    for key, accuracy in (("correlations", "final_test_accuracy"), ("correlations_best", "best_test_accuracy")):
        report[key] = {m: correlations(used[m].to_numpy(float), used[accuracy].to_numpy(float)) for m in MEASURES}
    if LR in study.searched:
        log_lr = np.log(used[LR].to_numpy(float))
        report["partial_on_log_lr"] = {
            m: {
                "spearman": partial_correlation(
                    used[m].to_numpy(float), used["final_test_accuracy"].to_numpy(float), log_lr, rank=True
                ),
                "pearson": partial_correlation(
                    used[m].to_numpy(float), used["final_test_accuracy"].to_numpy(float), log_lr, rank=False
                ),
            }
            for m in MEASURES
        }
    if used["seed"].nunique() > 1:
        report["within_seed"] = {
            str(int(seed) if float(seed).is_integer() else seed): {
                m: correlations(group[m].to_numpy(float), group["final_test_accuracy"].to_numpy(float))
                for m in MEASURES
            }
            for seed, group in used.groupby("seed")
        }
    report["aggregates"] = aggregates(used, [s for s in study.searched if s != "train.seed"])
    report["importances"] = importances(used, [s for s in study.searched if s != "train.seed"])
    return report


def aggregates(used: pd.DataFrame, keys: list[str]) -> list[dict[str, Any]]:
    """Mean ± std over seeds of final test accuracy and early Tr(F), per configuration."""
    if not keys or used.empty:
        return []
    grouped = used.groupby(keys, dropna=False)
    out = []
    for values, group in grouped:
        values = values if isinstance(values, tuple) else (values,)
        row: dict[str, Any] = dict(zip(keys, values, strict=True))
        row["n"] = len(group)
        for name in (
            "final_val_accuracy",
            "final_test_accuracy",
            "best_test_accuracy",
            "early_fisher_trace",
            "fisher_peak",
        ):
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
            rho = values.corr(used["final_test_accuracy"], method="spearman")
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
        for name, fig in figures.items():
            fig.savefig(out / name)
            plt.close(fig)
            files.append(out / name)
    files.append(out / "report.md")
    files[-1].write_text(markdown(report, [f.name for f in files if f.suffix == ".png"]))
    return files


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {value!r}")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def headline(report: dict[str, Any]) -> str:
    """The table printed by the CLI and shown first in report.md."""
    lines = [
        "| measure | vs | n | Spearman ρ [95% CI] | Kendall τ | Pearson r (log) | p (Spearman) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in (("correlations", "final"), ("correlations_best", "best")):
        for measure, block in report.get(key, {}).items():
            if "spearman" not in block:
                lines.append(f"| {measure} | {label} | {block.get('n', 0)} | — | — | — | — |")
                continue
            s, k, p = block["spearman"], block["kendall"], block["pearson"]
            ci = f"[{_fmt(s['ci95'][0], 2)}, {_fmt(s['ci95'][1], 2)}]"
            lines.append(
                f"| {measure} | {label} | {block['n']} | {_fmt(s['r'], 2)} {ci} | {_fmt(k['r'], 2)} | {_fmt(p['r'], 2)} | {_fmt(s['p'], 2)} |"
            )
    return "\n".join(lines)


def markdown(report: dict[str, Any], images: list[str]) -> str:
    parts = [
        f"# Study {report['study']}: early Fisher vs test accuracy\n",
        f"{report['n_trials']} trials, {report['n_used']} completed and used; excluded: "
        + ", ".join(f"{k} {v}" for k, v in report["excluded"].items())
        + f". ε = {report['epsilon']:g}; {len(report['not_crossed'])} completed trial(s) never reached it.\n",
    ]
    if "message" in report:
        parts.append(f"**{report['message']}.**\n")
    else:
        parts.append("Correlations over completed trials (Pearson on log Tr(F); bootstrap 95 % CI):\n")
        parts.append(headline(report) + "\n")
        for measure, block in report.get("partial_on_log_lr", {}).items():
            sp = block["spearman"]
            if "r" in sp:
                parts.append(
                    f"- {measure} partialled on log lr: Spearman {sp['r']:.2f} (p = {sp['p']:.2g}, n = {sp['n']})"
                )
        if report.get("importances"):
            parts.append(
                "\nKnob importance (|Spearman ρ| with final test accuracy, normalised): "
                + ", ".join(f"{k} {v:.2f}" for k, v in report["importances"].items())
            )
    parts += [f"\n![{name}]({name})" for name in images]
    return "\n".join(parts) + "\n"


def analyze(tracking_uri: str, name: str, out: Path, epsilon: float | None = None) -> dict[str, Any]:
    """Load, compute, write, and log the files as artifacts of the study's parent run."""
    client = MlflowClient(tracking_uri)
    study = load_study(client, name)
    eps = resolve_epsilon(study, epsilon)
    table = trials_table(study, eps, EPOCH_K)
    report = build_report(study, table, eps)
    for path in write_report(study, table, report, out):
        client.log_artifact(study.parent_run_id, str(path), artifact_path="report")
    return report
