"""report.md and the CLI's summary: the primary test first, everything else labelled exploratory."""

from __future__ import annotations

import math
from typing import Any

from analysis import names
from analysis.table import FINAL_CLEAN, FINAL_NOISY

# The per-configuration table: the aggregates' columns, each with its label and format.
AGGREGATE_COLUMNS = (
    (names.FINAL_VAL_ACCURACY, "val accuracy", ".3f"),
    (names.FINAL_TEST_ACCURACY, "final test accuracy", ".3f"),
    (names.BEST_TEST_ACCURACY, "best test accuracy", ".3f"),
    (names.EARLY_FISHER_TRACE, "early Tr(F)", ".3g"),
    (names.FISHER_PEAK, "Tr(F) peak", ".3g"),
    (FINAL_NOISY, "train accuracy, noisy labels", ".3f"),
    (FINAL_CLEAN, "train accuracy, clean labels", ".3f"),
)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _ci(ci: list[float | None] | None) -> str:
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "[—, —]"


def primary_line(report: dict[str, Any]) -> str:
    """One sentence: the pre-specified test with its estimate, CI, p and n."""
    test = report.get("primary", {})
    if test.get("estimate") is None:
        return f"**Primary test** (pre-specified): {test.get('message', 'not available')}."
    note = f" ({test['message']})" if test.get("message") else ""
    return (
        f"**Primary test** (pre-specified): {test['measure']}, {test['test']}: "
        f"ρ = {_fmt(test['estimate'])} {_ci(test['ci95'])}, p = {_fmt(test['p'])}, "
        f"n = {test['n_configurations']} configurations ({test['n']} trials){note}."
    )


def incomplete_line(report: dict[str, Any]) -> str:
    """Where configurations lost seeds: how many, why, and the primary test without them."""
    block = report.get("correlations", {}).get(report.get("primary", {}).get("measure"), {})
    k = block.get("n_configurations_incomplete", 0)
    if not k:
        return ""
    reasons: dict[str, int] = {}
    for row in report.get("incomplete_configurations", []):
        for reason, n in row["lost"].items():
            reasons[reason] = reasons.get(reason, 0) + n
    lost = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(reasons.items()))
    complete = report["primary"].get("complete_only", {})
    if complete.get("estimate") is None:
        without = complete.get("message", "no test")
    else:
        without = (
            f"ρ = {_fmt(complete['estimate'])} {_ci(complete['ci95'])}, p = {_fmt(complete['p'])}, "
            f"n = {complete['n_configurations']} configurations"
        )
    return (
        f"{k} of the {block['n_configurations']} configurations rest on fewer seeds than they ran "
        f"(trials lost: {lost}); their means are the survivors'. Over the complete configurations "
        f"only (a sensitivity check): {without}."
    )


def headline(report: dict[str, Any]) -> str:
    """The primary test, then the across-configuration correlation table (printed by the CLI)."""
    lines = [
        primary_line(report),
        "",
        "| measure | vs | configs (trials) | Spearman ρ [95% CI] | Kendall τ [95% CI] | Pearson r (log) [95% CI] | p (Spearman) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in (("correlations", "final"), ("correlations_best", "best")):
        for measure, block in report.get(key, {}).items():
            size = f"{block.get('n_configurations', 0)} ({block.get('n', 0)})"
            if "spearman" not in block:
                lines.append(f"| {measure} | {label} | {size} | — | — | — | — |")
                continue
            cells = [f"{_fmt(block[m]['r'])} {_ci(block[m]['ci95'])}" for m in ("spearman", "kendall", "pearson")]
            lines.append(f"| {measure} | {label} | {size} | {' | '.join(cells)} | {_fmt(block['spearman']['p'])} |")
    return "\n".join(lines)


def _beyond_table(report: dict[str, Any]) -> list[str]:
    lines = [
        "| question | measure | configs (trials) | r [95% CI] | p |",
        "|---|---|---|---|---|",
    ]
    for key, label in (("within_configuration", "within configurations"), ("beyond_early_val", "beyond val acc")):
        for measure, block in report.get(key, {}).items():
            size = f"{block['n_configurations']} ({block['n_trials']})"
            if "message" in block:
                lines.append(f"| {label} | {measure} | {size} | {block['message']} | — |")
                continue
            estimate = block.get("r", block.get("estimate"))
            lines.append(
                f"| {label} | {measure} | {size} | {_fmt(estimate)} {_ci(block['ci95'])} | {_fmt(block['p'])} |"
            )
    return lines


def _mean_std(row: dict[str, Any], name: str, fmt: str) -> str:
    mean, std = row.get(f"{name}_mean"), row.get(f"{name}_std")
    if mean is None:
        return "—"
    return f"{mean:{fmt}}" if std is None else f"{mean:{fmt}} ± {std:{fmt}}"


def configurations_table(report: dict[str, Any]) -> list[str]:
    """Per configuration, mean ± std over its seeds (the statistics above use one point each)."""
    rows = report.get("aggregates", [])
    if not rows:
        return []
    keys = [k for k in rows[0] if k != "n" and not k.endswith(("_mean", "_std"))]
    stats = [column for column in AGGREGATE_COLUMNS if f"{column[0]}_mean" in rows[0]]
    lines = [
        "| " + " | ".join([*keys, "n", *(label for _, label, _ in stats)]) + " |",
        "|" + "---|" * (len(keys) + 1 + len(stats)),
    ]
    for row in rows:
        cells = (
            [_fmt(row[k], 3) for k in keys] + [str(row["n"])] + [_mean_std(row, name, fmt) for name, _, fmt in stats]
        )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _spacing_sentence(report: dict[str, Any]) -> str:
    """How far apart the points behind the reads were: their ± does not cover reading between them."""
    peak = report.get("read_spacing", {}).get("fisher_peak", {})
    if peak.get("median") is None:
        return ""
    return (
        f" The peak reads interpolate points up to {peak['median']} steps apart (median over trials; "
        f"largest {peak['max']}); their ± covers the probe and the label draws, not reading between "
        "points (on digits ~5 % rms at 8 steps, ~16 % at 22: benchmarks/README.md)."
    )


def markdown(report: dict[str, Any], images: list[str]) -> str:
    smoothing = report.get("smoothing", {})
    parts = [
        f"# Study {report['study']}: early Fisher vs test accuracy\n",
        primary_line(report) + "\n",
        *([line + "\n"] if (line := incomplete_line(report)) else []),
        f"{report['n_trials']} trials, {report['n_used']} completed and used; excluded: "
        + ", ".join(f"{k} {v}" for k, v in report["excluded"].items())
        + f". ε = {report['epsilon']:g}; {len(report['not_crossed'])} completed trial(s) never reached it "
        f"(smoothed train loss). Reads from curves averaged over {smoothing.get('window_epochs', '—')}-epoch "
        f"boxes on a {smoothing.get('grid_epochs', '—')}-epoch grid.{_spacing_sentence(report)}\n",
    ]
    if "message" in report:
        parts.append(f"**{report['message']}.**\n")
    else:
        parts += [
            "## Exploratory (everything below; p-values Holm-adjusted in the family table)\n",
            "Across configurations (one point per configuration: mean log Tr(F), mean accuracy; "
            "Pearson on log Tr(F); Fisher z 95 % CI):\n",
            headline(report).split("\n", 2)[2] + "\n",
            "Beyond the hyperparameters: correlation of the replicas' deviations from their "
            "configuration's mean (log Tr(F) vs final test accuracy), and the same given the deviation "
            "of the validation accuracy at the first epoch end after the read's box (95 % CI: jackknife over configurations joined with Fisher z; "
            "permutation p within configurations):\n",
            "\n".join(_beyond_table(report)) + "\n",
            "| test | p | p (Holm) |",
            "|---|---|---|",
            *(f"| {t['name']} | {_fmt(t['p'])} | {_fmt(t['p_holm'])} |" for t in report.get("family", [])),
        ]
        if table := configurations_table(report):
            parts += ["\nPer configuration (mean ± std over its seeds):\n", *table]
        if report.get("importances"):
            parts.append(
                "\nKnob importance (|Spearman ρ| with final test accuracy over trials, normalised): "
                + ", ".join(f"{k} {v:.2f}" for k, v in report["importances"].items())
            )
    parts += [f"\n![{name}]({name})" for name in images]
    return "\n".join(parts) + "\n"
