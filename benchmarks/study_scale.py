"""How fishtune's driver copes with many concurrent trials and a long study (issue 19).

Three measurements, written as JSON to ``--out`` (default ``benchmarks/results/``, ignored by
git) and plotted to ``docs/img/study-scale.png``:

1. ``tune``: the real driver (Ray Tune with fishtune's Tuner settings, its Optuna searcher on
   the study's SQLite or journal storage (``--optuna-storage``), the MLflow callback and write queue, the progress printer; a
   SQLite MLflow store in a temporary folder) running a synthetic trainable
   (``scale_trial.py``) that trains nothing but reports what a trial of
   ``studies/digits-quick.yaml`` reports (same metric names and point counts, one report per
   epoch with a checkpoint), one report every ``--interval`` s. Local Ray with
   ``num_cpus`` = the concurrency (logical CPUs), so that C trials run at once on any machine.
   Each trial is a Ray actor process: ``--tune`` lists the concurrencies to run this way.
2. ``feed``: the same driver objects without Ray: fishtune's MLflow callback, write queue and
   Optuna searcher, fed in the driver's main thread by C simulated trials' result streams at the
   same cadence (Tune's event calls, in Tune's order: start, result, checkpoint, complete). It
   measures the MLflow path at concurrencies whose actors do not fit in memory (``--feed``);
   Tune's own loop cost is the ``tune`` rows'.
3. ``optuna``: the searcher's suggest / tell latency as the study grows (``--sizes``): the
   study's Optuna storage is filled with finished trials (each with its per-epoch
   intermediate values), then at each size fishtune's searcher (``study.searcher``, the spec's
   sampler settings) suggests and is told ``--cycles`` trials while ``--running`` others run.

Then ``fishtune analyze`` is timed on the largest study's store.

    .venv/bin/python benchmarks/study_scale.py --quick          # smoke run, ~2 min
    .venv/bin/python benchmarks/study_scale.py                  # the table's rows
    .venv/bin/python benchmarks/study_scale.py --tune 16 --feed --sizes   # one part only
    .venv/bin/python benchmarks/study_scale.py --plot-from benchmarks/results/a.json b.json   # one figure of several runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from scale_drivers import run_feed, run_tune  # noqa: E402
from scale_optuna import optuna_growth  # noqa: E402
from scale_trial import trial_shape  # noqa: E402

from study.spec import StudySpec, parse_spec  # noqa: E402

SPEC = ROOT / "studies" / "digits-quick.yaml"
PLOT = ROOT / "docs" / "img" / "study-scale.png"


def scale_spec(name: str, work: Path, concurrency: int, trials: int, storage: str | None = None) -> StudySpec:
    data = yaml.safe_load(SPEC.read_text())
    data["name"] = name
    data["search"].update(num_samples=trials, max_concurrent=concurrency, storage=storage)
    data["resources"] = {"cpu": 1, "gpu": 0}
    data["tracking"] = {"uri": f"sqlite:///{work / name}.db"}
    return parse_spec(data, source=str(SPEC))


def time_analyze(spec: StudySpec, work: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "study", "analyze", spec.name, "--tracking-uri", spec.tracking.uri]
    command += ["--out", str(work / "reports" / spec.name)]
    began = time.perf_counter()
    proc = subprocess.run(command, cwd=work, capture_output=True, text=True)
    elapsed = time.perf_counter() - began
    return {"study": spec.name, "trials": spec.search.num_samples, "seconds": elapsed, "exit": proc.returncode,
            "tail": (proc.stdout + proc.stderr)[-600:]}  # fmt: skip


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    """MLflow lag and the report rate reached against concurrency, and suggest latency against
    study size, one line per run and mode (its ``--label``), so that before/after runs share one
    figure. The rate matters beside the lag: a driver that cannot produce the load shows a small
    lag for a quarter of the reports."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 4.8))
    for n, results in enumerate(runs):
        color, label = f"C{n}", results.get("label") or f"run {n + 1}"
        for mode, marker in (("tune", "o"), ("feed", "s")):
            rows = sorted(results.get(mode, []), key=lambda r: r["concurrency"])
            for stat, style in (("median", ":"), ("p95", "-")):
                kept = [r for r in rows if r["mlflow_lag_s"][stat] is not None]
                xs, ys = [r["concurrency"] for r in kept], [r["mlflow_lag_s"][stat] for r in kept]
                if xs:
                    left.plot(xs, ys, style, marker=marker, color=color, label=f"{label}: {mode} {stat}")
            if rows:
                xs = [r["concurrency"] for r in rows]
                middle.plot(
                    xs, [r["reports_per_s"] for r in rows], "-", marker=marker, color=color, label=f"{label}: {mode}"
                )
        growth = results.get("optuna", {}).get("sizes", [])
        if growth:
            xs = [g["finished"] for g in growth]
            label = f"{label} ({results['optuna'].get('storage', 'sqlite')}, {results['optuna']['running']} running)"
            right.plot(xs, [g["suggest_s"]["median"] for g in growth], "-o", color=color, label=f"{label}: median")
            right.plot(xs, [g["suggest_s"]["max"] for g in growth], ":^", color=color, label=f"{label}: max")
    left.axhline(10, color="grey", lw=0.8)
    left.set(xscale="log", yscale="log", xlabel="concurrent trials (1 report/s each)",
             ylabel="report → MLflow lag (s)", title="MLflow lag (target: p95 < 10 s at 256)")  # fmt: skip
    concurrency = sorted({r["concurrency"] for res in runs for m in ("tune", "feed") for r in res.get(m, [])})
    if concurrency:
        interval = runs[0].get("interval_s", 1.0)
        middle.plot(concurrency, [c / interval for c in concurrency], color="grey", lw=0.8, label="scheduled")
    middle.set(xscale="log", yscale="log", xlabel="concurrent trials", ylabel="reports per second reached",
               title="load the driver produced and took")  # fmt: skip
    right.axhline(1, color="grey", lw=0.8)
    right.set(yscale="log", xlabel="finished trials in the study", ylabel="suggest (s)",
              title="Optuna suggest as the study grows (target: < 1 s at 2,000)")  # fmt: skip
    for axis in (left, middle, right):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small settings, a short study")
    parser.add_argument("--tune", type=int, nargs="*", help="concurrencies run through Ray Tune (default 16 64)")
    parser.add_argument("--feed", type=int, nargs="*", help="concurrencies fed without Ray (default 16 64 256)")
    parser.add_argument("--sizes", type=int, nargs="*", help="study sizes for the Optuna part")
    parser.add_argument("--waves", type=float, default=2.0, help="trials per setting = waves × concurrency")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between a trial's reports")
    parser.add_argument("--running", type=int, default=64, help="trials running while Optuna suggests")
    parser.add_argument("--cycles", type=int, default=10, help="suggest/tell cycles measured per study size")
    parser.add_argument("--label", default="", help="a name for this run in the JSON and the plot")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument("--plot-from", type=Path, nargs="+", help="only plot these result files (one line each)")
    parser.add_argument("--optuna-storage", choices=("sqlite", "journal"), default="sqlite",
                        help="search.storage of every part: the study folder's SQLite file or its journal")  # fmt: skip
    args = parser.parse_args()
    if args.plot_from:
        plot([json.loads(f.read_text()) for f in args.plot_from], args.plot)
        print(f"wrote {args.plot}")
        return
    quick = args.quick
    tune_rows = args.tune if args.tune is not None else ([4] if quick else [16, 64])
    feed_rows = args.feed if args.feed is not None else ([8] if quick else [16, 64, 256])
    sizes = args.sizes if args.sizes is not None else ([0, 50, 100] if quick else [0, 250, 500, 1000, 2000, 3000])
    running = min(args.running, 8) if quick else args.running
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    results: dict[str, Any] = {"label": args.label, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                               "interval_s": args.interval, "tune": [], "feed": []}  # fmt: skip
    storage = None if args.optuna_storage == "sqlite" else args.optuna_storage
    results["storage"] = args.optuna_storage
    with tempfile.TemporaryDirectory(prefix="fishtune-scale-") as tmp:
        work = Path(tmp)
        shape = trial_shape(scale_spec("shape", work, 1, 1))
        if quick:
            shape = type(shape)(3, shape.steps_per_epoch, shape.logged[:3], shape.batch_steps[:3])
        results["points_per_trial"] = sum(shape.expected_points().values())
        results["reports_per_trial"] = shape.epochs
        largest: StudySpec | None = None
        for mode, rows, runner in (("tune", tune_rows, run_tune), ("feed", feed_rows, run_feed)):
            for concurrency in rows:
                trials = max(1, round(args.waves * concurrency))
                spec = scale_spec(f"scale-{mode}-{concurrency}", work, concurrency, trials, storage)
                print(f"{mode}: {concurrency} at once, {trials} trials of {shape.epochs} reports", flush=True)
                row = runner(spec, work, shape, args.interval)
                results[mode].append(row)
                print(json.dumps(row, indent=1), flush=True)
                if largest is None or trials >= largest.search.num_samples:
                    largest = spec
        if sizes:
            spec = scale_spec("scale-optuna", work, running, max(sizes) + running, storage)
            results["optuna"] = optuna_growth(spec, work, sizes, running, args.cycles, shape.epochs)
            print(json.dumps(results["optuna"], indent=1), flush=True)
        if largest is not None:
            results["analyze"] = time_analyze(largest, work)
            print(json.dumps(results["analyze"], indent=1), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"study-scale{'-quick' if quick else ''}{'-' + args.label if args.label else ''}.json"
    (args.out / name).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out / name}")
    figure = args.out / "study-scale-quick.png" if quick else args.plot  # a smoke run keeps docs/img as it is
    plot([results], figure)
    print(f"wrote {figure}")


if __name__ == "__main__":
    main()
