"""How long ``fishtune analyze`` takes on a large study (target: 500 trials × 2 000 steps ≤ 30 s).

Builds a synthetic MLflow SQLite store the way fishtune's tracker leaves it (parent run, child
runs with params, summary metrics and a ``curves.parquet`` artifact per trial; with
``--histories`` also the per-step metric histories, read when no artifact exists), then times
the whole analysis: reading MLflow, the table, correlations (permutation p, Fisher z intervals), plots and files.

    .venv/bin/python benchmarks/analysis_speed.py [--trials 500] [--steps 2000] [--histories]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis.report import analyze


def build(uri: str, trials: int, steps: int, histories: bool, folder: Path) -> None:
    client = MlflowClient(uri)
    exp = client.create_experiment("speed", artifact_location=(folder / "artifacts").as_uri())
    parent = client.create_run(exp, tags={"fishtune.role": "study", "fishtune.searched": "train.lr,penalty.coef"})
    client.log_param(parent.info.run_id, "fisher.epsilon", "0.6")
    rng = np.random.default_rng(0)
    step = np.arange(0, steps * 4, 4)
    for i in range(trials):
        lr, coef = 10 ** rng.uniform(-3, -1), 10 ** rng.uniform(-3, -1)
        run = client.create_run(
            exp,
            tags={
                "fishtune.role": "trial",
                "fishtune.trial_id": f"t{i:05d}",
                "fishtune.outcome": "completed" if i % 10 else "diverged",
                "mlflow.parentRunId": parent.info.run_id,
            },
        )
        rid = run.info.run_id
        client.log_batch(
            rid, params=[Param("train.lr", str(lr)), Param("penalty.coef", str(coef)), Param("train.seed", "0")]
        )
        epoch = step / 40
        fisher = 100 * np.exp(-((epoch - 3) ** 2) / 4) / lr**0.3 + rng.normal(0, 1, len(step)) ** 2
        loss = 2.3 * np.exp(-epoch * lr * 20)
        curves = pd.DataFrame({"step": step, "epoch": epoch, "train_loss": loss, "fisher_trace": fisher})
        acc = float(0.9 + 0.05 * np.log10(lr / 1e-3) / 2 + rng.normal(0, 0.01))
        summary = [
            Metric(k, v, 0, int(step[-1]))
            for k, v in (("final_test_accuracy", acc), ("best_test_accuracy", acc), ("final_val_accuracy", acc))
        ]
        client.log_batch(rid, metrics=summary)
        path = folder / "curves.parquet"
        curves.to_parquet(path, index=False)
        client.log_artifact(rid, str(path))
        if histories:
            metrics = [
                Metric(n, float(v), 0, int(s))
                for n in ("epoch", "train_loss", "fisher_trace")
                for s, v in zip(step, curves[n], strict=True)
            ]
            for start in range(0, len(metrics), 1000):
                client.log_batch(rid, metrics=metrics[start : start + 1000])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--histories", action="store_true", help="also log per-step metric histories")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        start = time.perf_counter()
        build(uri, args.trials, args.steps, args.histories, folder)
        built = time.perf_counter() - start
        start = time.perf_counter()
        report = analyze(uri, "speed", folder / "report")
        took = time.perf_counter() - start
    print(
        f"store built in {built:.1f} s; analyze: {args.trials} trials × {args.steps} steps in {took:.1f} s "
        f"(n_used {report['n_used']}, Spearman ρ(peak) = {report['correlations']['fisher_peak']['spearman']['r']:.2f})"
    )


if __name__ == "__main__":
    main()
