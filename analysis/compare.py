"""``fishtune compare``: several penalty studies as one table, the paper's Table 1.

Reads each study from MLflow only (as ``fishtune analyze`` does), builds the arms of
:mod:`analysis.arms` and writes ``compare.json``, ``arms.csv``, ``coefficients.csv`` and
``compare.md`` into the output folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from analysis.arms import Arm, arms_table, comparisons, study_arms
from analysis.mlflow_reader import load_study
from analysis.report import EPOCH_K, resolve_epsilon
from analysis.table import COEF, trials_table

# What a Tr(F) point is and how densely the points were logged: a peak read depends on both
# (the logging density alone moves it by up to ~15 % at the old default's spacing;
# benchmarks/README.md), so a Tr(F) peak ratio between studies that differ here is partly
# their measurement's.
MEASUREMENT_FIELDS = ("fisher.labels", "fisher.samples", "fisher.label_samples", "fisher.top_classes")
MEASUREMENT_PREFIX = "fisher.schedule."
NOT_RECORDED = "(not recorded)"


class TooFewArms(ValueError):
    """Fewer than two arms: there is nothing to compare (a user error)."""


def measurement_differences(params: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """The Tr(F) measurement settings that differ between studies: field → study → value.

    ``params``: each study's parent-run params (its resolved, flattened spec). Values are compared
    as recorded, without torch's config classes (the analysis runs without them), so a value
    given explicitly and the same value left to its default (``top_classes: 2`` and ``None``)
    count as different: a warning too many, never one too few.
    """
    fields = sorted(
        {k for p in params.values() for k in p if k in MEASUREMENT_FIELDS or k.startswith(MEASUREMENT_PREFIX)}
    )
    values = {f: {study: p.get(f, NOT_RECORDED) for study, p in params.items()} for f in fields}
    return {f: by_study for f, by_study in values.items() if len(set(by_study.values())) > 1}


def measurement_warning(differences: dict[str, dict[str, str]]) -> str | None:
    """One sentence naming the differing settings, or None when the studies measure alike."""
    if not differences:
        return None
    settings = "; ".join(
        f"{field} " + ", ".join(f"{value} in {study}" for study, value in by_study.items())
        for field, by_study in differences.items()
    )
    return (
        f"the studies measure Tr(F) differently ({settings}), so their Tr(F) peak ratios mix the "
        "measurement with the penalty: rerun them with the same fisher settings to compare peaks"
    )


def compare(tracking_uri: str, studies: list[str], out: Path) -> dict[str, Any]:
    """Raises :class:`TooFewArms` where the studies cannot give a comparison: a study named twice
    (its arms would count twice in Holm's adjustment), fewer than two arms, or no unpenalised arm
    to compare against."""
    twice = sorted({name for name in studies if studies.count(name) > 1})
    if twice:
        raise TooFewArms(f"study {twice[0]!r} is named twice; name each study once")
    client = MlflowClient(tracking_uri)
    arms: list[Arm] = []
    params: dict[str, dict[str, str]] = {}
    for name in studies:
        study = load_study(client, name)
        params[name] = study.params
        table = trials_table(study, resolve_epsilon(study, None), EPOCH_K)
        arms += study_arms(table, study.searched, study.params) if not table.empty else []
    if len(arms) < 2:
        raise TooFewArms(f"studies {', '.join(studies)}: {len(arms)} arm(s) with completed trials; compare needs two")
    labels = [arm.label for arm in arms]
    same = sorted({label for label in labels if labels.count(label) > 1})
    if same:
        raise TooFewArms(f"studies {', '.join(studies)}: two arms are both {same[0]!r}; compare studies that differ")
    if all(arm.penalised for arm in arms):
        raise TooFewArms(
            f"studies {', '.join(studies)}: no arm without a penalty to compare against; add the baseline study"
        )
    result = {
        "studies": studies,
        "arms": arms_table(arms),
        "comparisons": comparisons(arms),
        "measurement_differences": measurement_differences(params),
    }
    coefficients = [arm.tried.assign(arm=arm.label) for arm in arms if not arm.tried.empty]
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2))
    pd.DataFrame(result["arms"]).to_csv(out / "arms.csv", index=False)
    tried = pd.concat(coefficients, ignore_index=True) if coefficients else pd.DataFrame()
    tried.to_csv(out / "coefficients.csv", index=False)
    (out / "compare.md").write_text(markdown(result, tried))
    return result


def _f(value: float | None, fmt: str) -> str:
    return "—" if value is None or pd.isna(value) else f"{value:{fmt}}"


def _pm(row: Any, short: str, fmt: str) -> str:
    mean, std = row[f"{short}_mean"], row[f"{short}_std"]
    return _f(mean, fmt) if std is None or pd.isna(std) else f"{_f(mean, fmt)} ± {_f(std, fmt)}"


def _ratio_interval(ci: list[float] | None) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "[—, —]"


def markdown(result: dict[str, Any], tried: pd.DataFrame) -> str:
    lines = [
        f"# Comparison of {', '.join(result['studies'])}\n",
        "The unit is the run: each arm is one configuration, its seeds the replicates. A penalised "
        "arm's coefficient was chosen on mean validation accuracy among the values tried that lost "
        "no seed (a diverged one is chosen only if every value lost one), which favours it a little; "
        "the arms share their seeds, so these independent-sample (Welch) intervals are conservative.\n",
        "| arm | α (chosen on val) | α tried | n | val accuracy | final test accuracy [95 % t CI] "
        "| best test accuracy | Tr(F) peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if warning := measurement_warning(result["measurement_differences"]):
        lines.insert(1, f"**Warning:** {warning}.\n")
    for row in result["arms"]:
        ci = row["test_ci95"]
        interval = f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "[—, —]"
        lines.append(
            f"| {row['arm']} | {_f(row['coef'], '.3g')} | {row['coefs_tried'] or '—'} | {row['n']} "
            f"| {_pm(row, 'val', '.4f')} | {_f(row['test_mean'], '.4f')} {interval} "
            f"| {_pm(row, 'best', '.4f')} | {_pm(row, 'peak', '.3g')} |"
        )
    lines += [
        f"\nFinal test accuracy, differences in points (Holm over the {len(result['comparisons'])} comparisons):\n",
        "| comparison | difference [95 % Welch CI] | Welch p | Holm p | Tr(F) peak ratio [95 % CI, geometric] |",
        "|---|---|---|---|---|",
    ]
    notes = []
    for row in result["comparisons"]:
        ci = row["ci95_points"]
        interval = f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "[—, —]"
        if "note" in row:
            notes.append(f"{row['a']} − {row['b']}: {row['note']}.")
        lines.append(
            f"| {row['a']} − {row['b']} | {_f(row['difference_points'], '+.2f')} pts {interval} "
            f"| {_f(row['p'], '.2g')} | {_f(row['p_holm'], '.2g')} | {_f(row['peak_ratio'], '.2f')} "
            f"{_ratio_interval(row['peak_ratio_ci95'])} |"
        )
    lines += [f"\n{note}" for note in notes]
    if not tried.empty:
        lines += [
            "\nEvery coefficient tried (mean ± std over seeds):\n",
            "| arm | α | n | lost | val accuracy | final test accuracy | Tr(F) peak |",
            "|---|---|---|---|---|---|---|",
        ]
        for _, row in tried.iterrows():
            lines.append(
                f"| {row['arm']} | {row[COEF]:.3g} | {row['n']} | {row['lost']} | {_pm(row, 'val', '.4f')} "
                f"| {_pm(row, 'test', '.4f')} | {_pm(row, 'peak', '.3g')} |"
            )
    return "\n".join(lines) + "\n"
