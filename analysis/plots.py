"""Plots of a study: one function per figure, each takes tables and returns a Figure (Agg)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from analysis import names
from analysis.table import COEF, LR

BINS = 6


def fisher_curves(table: pd.DataFrame, curves: dict[str, dict[str, pd.Series]], run_ids: list[str]) -> Figure:
    """Tr(F) against epoch for every trial, coloured by learning rate on a log scale."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    lrs = table[LR].astype(float) if LR in table else pd.Series([np.nan] * len(table))
    finite = lrs[np.isfinite(lrs) & (lrs > 0)]
    norm = LogNorm(finite.min(), finite.max()) if len(finite) and finite.min() < finite.max() else None
    cmap = plt.get_cmap("viridis")
    for (_, row), run_id, lr in zip(table.iterrows(), run_ids, lrs, strict=True):
        c = curves.get(run_id, {})
        joined = pd.concat({"fisher": c.get(names.FISHER_TRACE), "epoch": c.get(names.EPOCH)}, axis=1).dropna()
        if joined.empty:
            continue
        color = cmap(norm(lr)) if norm is not None and np.isfinite(lr) else "tab:blue"
        style = "-" if row["outcome"] == names.COMPLETED else ":"
        ax.plot(joined["epoch"], joined["fisher"], style, color=color, lw=1, alpha=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Tr(F) on the probe")
    ax.set_title("Tr(F) during training (dotted: not completed)")
    if norm is not None:
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="learning rate")
    fig.tight_layout()
    return fig


def spectrum_curves(
    table: pd.DataFrame, curves: dict[str, dict[str, pd.Series]], run_ids: list[str], momentum: float | None
) -> Figure:
    """λ_max·lr (edge of stability: 2 for plain GD, 2(1 + β) with heavy-ball momentum β) and the
    outlier share λ_max / Tr(F) against epoch, every trial, coloured by learning rate."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100, layout="constrained")
    lrs = table[LR].astype(float) if LR in table else pd.Series([np.nan] * len(table))
    finite = lrs[np.isfinite(lrs) & (lrs > 0)]
    norm = LogNorm(finite.min(), finite.max()) if len(finite) and finite.min() < finite.max() else None
    cmap = plt.get_cmap("viridis")
    for run_id, lr in zip(run_ids, lrs, strict=True):
        c = curves.get(run_id, {})
        series = {k: c.get(k) for k in (names.FISHER_LAMBDA_MAX, names.FISHER_LAMBDA_MAX_LR, names.FISHER_TRACE)}
        joined = pd.concat({**series, "epoch": c.get(names.EPOCH)}, axis=1).dropna()
        if joined.empty:
            continue
        color = cmap(norm(lr)) if norm is not None and np.isfinite(lr) else "tab:blue"
        axes[0].plot(joined["epoch"], joined[names.FISHER_LAMBDA_MAX_LR], color=color, lw=1, alpha=0.8)
        share = joined[names.FISHER_LAMBDA_MAX] / joined[names.FISHER_TRACE]
        axes[1].plot(joined["epoch"], share, color=color, lw=1, alpha=0.8)
    axes[0].axhline(2.0, color="k", ls="--", lw=0.8, label="2 (plain GD)")
    if momentum:
        axes[0].axhline(2 * (1 + momentum), color="k", ls=":", lw=0.8, label=f"2(1 + β), β = {momentum:g}")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("λ_max(F) · lr")
    axes[0].legend(fontsize=8)
    axes[1].set_ylabel("λ_max / Tr(F)")
    axes[1].set_ylim(0, 1)
    for ax in axes:
        ax.set_xlabel("epoch")
    fig.suptitle("Top eigenvalue of the probe Fisher")
    if norm is not None:
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="learning rate")
    return fig


def fisher_vs_accuracy(table: pd.DataFrame, report: dict) -> Figure:
    """Early Tr(F) and Fisher peak against final test accuracy, completed trials only."""
    used = table[table["outcome"] == names.COMPLETED]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), dpi=100, sharey=True, layout="constrained")
    lrs = used[LR].astype(float) if LR in used else pd.Series(dtype=float)
    positive = lrs[np.isfinite(lrs) & (lrs > 0)]
    # one scale for both panels and the bar, from every completed trial's lr (a panel drops the
    # trials without its read); none where the lr does not vary
    norm = LogNorm(positive.min(), positive.max()) if positive.nunique() > 1 else None
    colour = {"c": lrs, "cmap": "viridis", "norm": norm} if norm is not None else {}
    for ax, measure, label in zip(
        axes,
        (names.EARLY_FISHER_TRACE, names.FISHER_PEAK),
        ("early Tr(F) (smoothed, ε crossing)", "Tr(F) peak (smoothed, after epoch 1)"),
        strict=True,
    ):
        points = ax.scatter(used[measure], used[names.FINAL_TEST_ACCURACY], s=22, **colour)
        ax.set_xscale("log")
        # plain numbers; the minor ticks labelled too where the axis spans under two decades
        # (Tr(F) reads often lie within one, e.g. 120–180, where decade labels alone show none)
        ax.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        ax.set_xlabel(label)
        block = report["correlations"].get(measure, {})
        rho = block.get("spearman", {}).get("r")
        size = f"{block.get('n_configurations', 0)} configurations, {block.get('n', 0)} trials"
        ax.set_title(f"Spearman ρ = {rho:.2f} ({size})" if rho is not None else size, fontsize=9)
    axes[0].set_ylabel("final test accuracy")
    if norm is not None:
        fig.colorbar(points, ax=axes, label="learning rate")
    return fig


def accuracy_heatmap(table: pd.DataFrame) -> Figure:
    """Mean final test accuracy over an lr × penalty-coefficient grid (log bins when continuous)."""
    used = table[table["outcome"] == names.COMPLETED].copy()
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for axis in (LR, COEF):
        values = used[axis].astype(float)
        if values.nunique() > BINS:
            edges = np.geomspace(values[values > 0].min(), values.max() * (1 + 1e-9), BINS + 1)
            centres = np.sqrt(edges[:-1] * edges[1:])  # geometric bin centres
            used[axis] = centres[np.clip(np.digitize(values, edges) - 1, 0, BINS - 1)]
    grid = used.pivot_table(index=COEF, columns=LR, values=names.FINAL_TEST_ACCURACY, aggfunc="mean")
    image = ax.imshow(grid.values, origin="lower", cmap="magma", aspect="auto")
    ax.set_xticks(range(len(grid.columns)), [f"{v:.2g}" for v in grid.columns], rotation=45)
    ax.set_yticks(range(len(grid.index)), [f"{v:.2g}" for v in grid.index])
    for (i, j), v in np.ndenumerate(grid.values):
        if np.isfinite(v):
            ax.text(
                j,
                i,
                f"{v:.3f}",
                ha="center",
                va="center",
                fontsize=7,
                color="w" if v < np.nanmean(grid.values) else "k",
            )
    ax.set_xlabel("learning rate")
    ax.set_ylabel("penalty coefficient")
    ax.set_title("final test accuracy (mean per cell)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def memorisation_curves(
    table: pd.DataFrame, curves: dict[str, dict[str, pd.Series]], run_ids: list[str], keys: list[str]
) -> Figure:
    """Under label noise: training accuracy (against the labels trained on) and Tr(F) on the
    noisy-label examples (dashed) and the clean ones (solid) against epoch, one colour per
    configuration (``keys``: the searched names but the seed); Tr(F) with its ±1 stderr band."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100, layout="constrained")
    labels = [", ".join(f"{k}={row[k]}" for k in keys) or "all trials" for _, row in table.iterrows()]
    colours = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(dict.fromkeys(labels))}
    groups = (
        ("clean", "-", names.TRAIN_ACCURACY_CLEAN, names.FISHER_TRACE_CLEAN, names.FISHER_TRACE_CLEAN_STDERR),
        ("noisy", "--", names.TRAIN_ACCURACY_NOISY, names.FISHER_TRACE_NOISY, names.FISHER_TRACE_NOISY_STDERR),
    )
    for run_id, label in zip(run_ids, labels, strict=True):
        c = curves.get(run_id, {})
        epoch = c.get(names.EPOCH)
        if epoch is None or epoch.empty:
            continue
        for _, style, accuracy, trace, stderr in groups:
            acc = pd.concat({"y": c.get(accuracy), "epoch": epoch}, axis=1).dropna()
            axes[0].plot(acc["epoch"], acc["y"], style, color=colours[label], lw=1, alpha=0.8)
            tr = pd.concat({"y": c.get(trace), "se": c.get(stderr), "epoch": epoch}, axis=1).dropna()
            axes[1].plot(tr["epoch"], tr["y"], style, color=colours[label], lw=1, alpha=0.8)
            axes[1].fill_between(tr["epoch"], tr["y"] - tr["se"], tr["y"] + tr["se"], color=colours[label], alpha=0.15)
    axes[0].set_ylabel("training accuracy (labels trained on)")
    axes[0].set_ylim(0, 1)
    axes[1].set_ylabel("Tr(F) on the probe's examples")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("epoch")
    handles = [plt.Line2D([], [], color=colour, label=label) for label, colour in colours.items()]
    handles += [plt.Line2D([], [], color="k", ls=style, label=group) for group, style, *_ in groups]
    axes[0].legend(handles=handles, fontsize=7)
    fig.suptitle("Memorisation: noisy-label vs clean training examples (dashed: noisy)")
    return fig
