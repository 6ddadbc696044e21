"""The default Tr(F) measurement of the default study: its precision, its cost, its density-independence.

Four measurements on the trial of ``studies/digits-quick.yaml`` (its data, model, epochs and
penalty; lr and penalty coefficient fixed to ``--lr`` / ``--coef``), all in this one process:

1. **Exactness**: the exact-over-classes Tr(F) against a float64 loop over classes and examples.
2. **Label noise at the peak**: θ trained to the epoch of the Tr(F) peak; the relative std of one
   logged Tr(F) over ``--draws`` label draws, for the default estimator, ``top`` with
   ``top_classes`` 1 and 2, and ``sampled`` K = 1 and K = 16 (the probe fixed: this is the noise
   of one point, not of the probe's composition).
3. **Cost**: the trial's CPU time (one thread) with the default schedule against the same trial logging Tr(F)
   only at epoch ends (best of ``--repeats``, one process, one thread).
4. **Density**: the same trial with a 4× larger and a 4× smaller budget; the peak read by the
   analysis' rules (:func:`analysis.measures.smoothed_peak`) against the default's.
5. **Thinning** (``--thin``): the trial logged at every step for 6 epochs, then thinned to every
   2 … 41 steps (41 = epoch ends on digits) at each of the k phases of the thinning; the peak and
   early reads at several box widths against the every-step reads (mean, sd, rms and worst over
   the phases): how dense a schedule the reads need, and how far a read at a density may be off.

    .venv/bin/python benchmarks/fisher_schedule.py [--lr 0.02] [--coef 0.003] [--repeats 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from pathlib import Path
from typing import Any
from unittest import mock

import malloc_option
import pandas as pd
import torch
import torch.nn.functional as F
import yaml

from analysis.measures import smoothed_early, smoothed_peak
from trainables import loop, trial
from trainables.config import TrialConfig
from trainables.fisher import fisher_trace
from trainables.loop import train
from trainables.report import EpochReport
from trainables.schema import unflatten
from trainables.trial import probe_indices

DEFAULT_STUDY = Path(__file__).resolve().parents[1] / "studies" / "digits-quick.yaml"


def trial_config(lr: float, coef: float, **flat_overrides: Any) -> TrialConfig:
    spec = yaml.safe_load(DEFAULT_STUDY.read_text())
    base = TrialConfig.from_mapping({k: spec[k] for k in ("data", "model", "train", "fisher", "penalty") if k in spec})
    flat = base.flat() | {"train.lr": lr, "penalty.coef": coef} | flat_overrides
    return TrialConfig.from_mapping(unflatten(flat))


FISHER_SECONDS: list[float] = []  # CPU time of each Tr(F) call of the current run


def _timed_fisher_trace(*args: Any, **kwargs: Any) -> Any:
    start = time.process_time()
    try:
        return fisher_trace(*args, **kwargs)
    finally:
        FISHER_SECONDS.append(time.process_time() - start)


def run(cfg: TrialConfig) -> tuple[float, list[EpochReport], float]:
    """The trial's CPU time (this process, one thread: what other work on the machine changes
    least), its reports, and the CPU time its Tr(F) points beyond step 0 and the epoch ends took
    (measured inside the run: the A/B difference of two runs is at the mercy of the machine)."""
    FISHER_SECONDS.clear()
    start = time.process_time()
    with mock.patch.object(trial, "fisher_trace", _timed_fisher_trace):
        reports = list(loop.train(cfg, torch.device("cpu")))
    seconds = time.process_time() - start
    points = len(curve(reports, "fisher_trace"))
    extra = points - (cfg.train.epochs + 1)
    return seconds, reports, sum(FISHER_SECONDS) * extra / max(1, points)


def curve(reports: list[EpochReport], name: str) -> pd.Series:
    points = [p for r in reports for p in r.curves.get(name, [])]
    return pd.Series(dict(points), dtype=float).sort_index()


def peak_read(reports: list[EpochReport]) -> Any:
    return smoothed_peak(
        curve(reports, "fisher_trace"), curve(reports, "epoch"), stderr=curve(reports, "fisher_trace_stderr")
    )


def exactness(cfg: TrialConfig) -> float:
    """Max relative error of exact Tr(F) against a float64 loop over classes and examples."""
    from trainables import data as datasets
    from trainables.models import build_model

    info = datasets.dataset_info(cfg.data.name)
    torch.manual_seed(0)
    model = build_model(cfg.model.name, cfg.model.options, info.input_shape, info.num_classes).double().eval()
    x = torch.randn(8, *info.input_shape, dtype=torch.float64)
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        probs = model(x).softmax(1)
    expected = torch.zeros(len(x), dtype=torch.float64)
    for i in range(len(x)):
        for c in range(info.num_classes):
            grads = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), torch.tensor([c])), params)
            expected[i] += probs[i, c] * sum(g.pow(2).sum() for g in grads)
    got = fisher_trace(model, x, labels="exact").mean
    return abs(got - expected.mean().item()) / expected.mean().item()


def label_noise(cfg: TrialConfig, peak_epoch: float, draws: int) -> dict[str, float]:
    """Relative std over label draws of one Tr(F) point at θ trained to ``peak_epoch`` (rounded)."""
    from trainables import data as datasets
    from trainables.models import build_model

    epochs = max(1, round(peak_epoch))
    short = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))
    state = list(train(short, torch.device("cpu")))[-1].state  # the checkpoint holds θ
    info = datasets.dataset_info(cfg.data.name)
    model = build_model(cfg.model.name, cfg.model.options, info.input_shape, info.num_classes)
    model.load_state_dict(state["model"])
    splits = cfg.data.load(torch.device("cpu"))
    probe = splits.train_x[probe_indices(cfg, len(splits.train_y))]
    exact = fisher_trace(model, probe, labels="exact").mean
    estimators: dict[str, dict[str, Any]] = {
        f"default ({cfg.fisher.labels}, K={cfg.fisher.draws}, top_classes={cfg.fisher.top})": {
            "labels": cfg.fisher.trace_labels,
            "label_samples": cfg.fisher.draws,
            "top_classes": cfg.fisher.top,
        },
        "top, top_classes=1": {"labels": "top", "top_classes": 1},
        "top, top_classes=2": {"labels": "top", "top_classes": 2},
        "sampled K=1": {"labels": None, "label_samples": 1},
        "sampled K=16": {"labels": None, "label_samples": 16},
    }
    g = torch.Generator().manual_seed(0)
    out = {"exact Tr(F)": exact}
    for name, kwargs in estimators.items():
        values = [fisher_trace(model, probe, generator=g, **kwargs).mean for _ in range(draws)]
        out[name] = statistics.stdev(values) / exact
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--coef", type=float, default=0.003)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--draws", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--thin", action="store_true", help="also run measurement 5 (thinning)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=YAML",
        help="override a trial field, e.g. fisher.samples=32",
    )
    malloc_option.add_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc = malloc_option.apply(args)
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    cfg = trial_config(args.lr, args.coef, **overrides)
    budget = cfg.fisher.schedule.budget
    print(
        f"default: fisher.labels={cfg.fisher.labels} samples={cfg.fisher.samples} budget={budget} "
        f"dense_until_epoch={cfg.fisher.schedule.dense_until_epoch}; {cfg.train.epochs} epochs, lr {args.lr}; "
        f"{malloc}"
    )
    print(f"1. exact vs float64 loop over classes and examples: rel. error {exactness(cfg):.1e}")

    variants = {
        "epoch ends only": trial_config(args.lr, args.coef, **(overrides | {"fisher.schedule.dense_until_epoch": 0.0})),
        "default": cfg,
        "budget × 4": trial_config(args.lr, args.coef, **(overrides | {"fisher.schedule.budget": budget * 4})),
        "budget / 4": trial_config(args.lr, args.coef, **(overrides | {"fisher.schedule.budget": budget / 4})),
    }
    timed: dict[str, tuple[float, list[EpochReport], float]] = {}
    for _ in range(args.repeats):  # interleaved, so that a busy spell of the machine hits every variant
        for name, variant in variants.items():
            result = run(variant)
            if name not in timed or result[0] < timed[name][0]:
                timed[name] = result
    base = timed["epoch ends only"][0]
    reads = {name: peak_read(reports) for name, (_, reports, _) in timed.items()}
    default_peak = reads["default"]
    print(
        f"3./4. schedule | Tr(F) points | CPU s (best of {args.repeats}) | A/B vs epoch ends | "
        "in-run share of extra points | smoothed peak ± se | vs default"
    )
    for name, (seconds, reports, extra_seconds) in timed.items():
        points = len(curve(reports, "fisher_trace"))
        read = reads[name]
        peak = f"{read.value:.1f} ± {read.stderr:.1f} (epoch {read.epoch:.2f})" if read else "—"
        diff = f"{read.value / default_peak.value - 1:+.1%}" if read and default_peak else "—"
        share = extra_seconds / (seconds - extra_seconds)
        print(f"   {name} | {points} | {seconds:.2f} | {seconds / base - 1:+.1%} | {share:+.1%} | {peak} | {diff}")
    if default_peak is not None:
        noise = label_noise(cfg, default_peak.epoch, args.draws)
        print(
            f"2. at θ after {max(1, round(default_peak.epoch))} epochs (the peak): exact Tr(F) {noise.pop('exact Tr(F)'):.1f}"
        )
        for name, rel in noise.items():
            print(f"   {name}: relative std over {args.draws} label draws {rel:.1%}")
    if args.thin:
        thinning(args.lr, args.coef, overrides)


def merged_windows(loss: pd.Series, examples: pd.Series, keep: list[int]) -> tuple[pd.Series, pd.Series]:
    """The train-loss windows a schedule logging only at ``keep`` would have logged: each kept
    step's window pools, weighted by examples, the every-step windows since the previous kept step."""
    group = pd.Series(keep, index=keep).reindex(loss.index).bfill()
    frame = pd.DataFrame({"mass": loss * examples, "n": examples, "group": group}).dropna()
    pooled = frame.groupby("group")[["mass", "n"]].sum()
    pooled.index = pooled.index.astype(int)
    return pooled["mass"] / pooled["n"], pooled["n"]


def thinning(lr: float, coef: float, overrides: dict[str, Any]) -> None:
    """Measurement 5: the peak and early reads of a thinned every-step run, over every phase.

    A schedule every k steps lands on one of k phases of the curve; which one is an accident of
    the step count, so each read's error against the every-step read is given over all k phases
    (mean, sd, rms and the worst), not only for phase 0. The early read (Tr(F) where the smoothed
    train loss crosses ε) thins the train-loss windows too: a kept point's window pools the ones
    since the previous kept point, weighted by examples, as the trainable would have logged it.
    """
    dense = {"fisher.schedule.dense_every": 1, "fisher.schedule.dense_until_epoch": 6.0}
    cfg = trial_config(lr, coef, **(overrides | dense))
    epsilon = cfg.fisher.epsilon
    assert epsilon is not None
    _, reports, _ = run(cfg)
    fisher, epoch = curve(reports, "fisher_trace"), curve(reports, "epoch")
    loss, examples = curve(reports, "train_loss"), curve(reports, "train_examples")
    steps_per_epoch = reports[0].step

    def reads(keep: list[int], window: float) -> tuple[float, float]:
        thin_loss, thin_examples = merged_windows(loss, examples, keep)
        peak = smoothed_peak(fisher[keep], epoch[keep], window=window)
        early = smoothed_early(fisher[keep], thin_loss, epoch[keep], epsilon, weights=thin_examples, window=window)
        return (peak.value if peak else math.nan), (early.value if early else math.nan)

    print(
        "5. peak and early reads after thinning an every-step run to every k steps, over the k phases, "
        "against the every-step reads"
    )
    for window in (0.5, 1.0, 2.0):
        reference = reads(list(fisher.index), window)
        print(f"   window {window} epochs (every-step reads: peak {reference[0]:.1f}, early {reference[1]:.1f}):")
        for every in (2, 4, 8, 11, 16, 22, steps_per_epoch):
            errors: tuple[list[float], list[float]] = ([], [])  # peak, early: one per phase
            for phase in range(every):
                keep = [
                    s
                    for s in fisher.index
                    if (s - phase) % every == 0 or s % steps_per_epoch == 0 or s > 6 * steps_per_epoch
                ]
                for found, ref, out in zip(reads(keep, window), reference, errors, strict=True):
                    out.append(found / ref - 1)
            cells = [
                f"{label} mean {statistics.fmean(e):+.1%}, sd {statistics.pstdev(e):.1%}, "
                f"rms {statistics.fmean(x * x for x in e) ** 0.5:.1%}, worst {max(e, key=abs):+.1%}"
                for label, e in zip(("peak", "early"), errors, strict=True)
            ]
            print(f"     every {every:2d}: " + " | ".join(cells))


if __name__ == "__main__":
    main()
