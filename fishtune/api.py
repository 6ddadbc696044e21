"""The functions behind ``import fishtune``: what ``fishtune run``, ``status`` and ``analyze``
do, returning Python objects. A user mistake raises :class:`trainables.schema.ConfigError` (a
``ValueError``) with the CLI's one sentence; how a launch ended is the returned ``outcome``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from study.exit_codes import Outcome
from study.store import StudyStore
from trainables.schema import ConfigError

CURVE_COLUMNS = ["trial", "run_id", "metric", "step", "value"]


@dataclass(frozen=True, slots=True)
class RunResult:
    outcome: Outcome  # .code is the CLI's exit status (0 finished, 1 failed, 130 interrupted)
    trials: pd.DataFrame  # as `fishtune status` shows them


@dataclass(frozen=True, slots=True)
class StudyResults:
    trials: pd.DataFrame
    curves: pd.DataFrame  # long format: trial, run_id, metric, step, value


def run(
    spec: str | Path | Mapping[str, Any],
    *,
    storage: str | Path = ".",
    tracking_uri: str | None = None,
    num_samples: int | None = None,
    address: str | None = None,
) -> RunResult:
    """Launch (or extend) a study from a spec file or a spec dict, as ``fishtune run`` does;
    ``tracking_uri`` and ``address`` follow the CLI's precedence (argument > environment > spec)."""
    from study import cli

    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)):
        raise ConfigError(f"num_samples: expected an integer, got {num_samples!r}")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(spec) if not isinstance(spec, Mapping) else Path(scratch) / "spec.yaml"
        if isinstance(spec, Mapping):
            path.write_text(yaml.safe_dump(_plain(spec), sort_keys=False))
        argv = ["run", "--storage", os.fspath(storage)]
        for flag, value in (("--tracking-uri", tracking_uri), ("--num-samples", num_samples), ("--address", address)):
            if value is not None:
                argv += [flag, str(value)]
        args = _parsed(cli, [*argv, "--", str(path)])  # "--": a spec path may start with "-"
        outcome = cli.run_outcome(args)
    return RunResult(outcome, _trials(StudyStore(storage, args.name), tracking_uri))


def load(name: str, *, storage: str | Path = ".", tracking_uri: str | None = None, curves: bool = True) -> StudyResults:
    """A study's trials table and (unless ``curves=False``) every trial's step-indexed curves."""
    store = StudyStore(storage, name)
    trials = _trials(store, tracking_uri)
    if not curves:
        return StudyResults(trials, pd.DataFrame(columns=CURVE_COLUMNS))
    from mlflow.tracking import MlflowClient

    from analysis.mlflow_reader import load_study

    data = load_study(MlflowClient(_uri(store, tracking_uri)), name)
    trial_of = dict(zip(data.runs["run_id"], data.runs["trial_id"], strict=True)) if len(data.runs) else {}
    frames = [
        pd.DataFrame(
            {
                "trial": trial_of.get(run_id, run_id),
                "run_id": run_id,
                "metric": metric,
                "step": series.index,
                "value": series.to_numpy(),
            }
        )
        for run_id, per_metric in data.curves.items()
        for metric, series in per_metric.items()
    ]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CURVE_COLUMNS)
    return StudyResults(trials, table)


def analyze(
    name: str,
    *,
    storage: str | Path = ".",
    tracking_uri: str | None = None,
    out: str | Path | None = None,
    epsilon: float | None = None,
    smooth_epochs: float = 1.0,
) -> dict[str, Any]:
    """``fishtune analyze``: writes the report to ``out`` (default reports/<study>/) and returns it,
    with the CLI's checks and its record of the primary test on the study's parent run."""
    from study import cli

    argv = ["analyze", "--storage", os.fspath(storage), "--smooth-epochs", repr(float(smooth_epochs))]
    for flag, value in (("--tracking-uri", tracking_uri), ("--out", out), ("--epsilon", epsilon)):
        if value is not None:
            argv += [flag, os.fspath(value) if isinstance(value, (str, Path)) else repr(float(value))]
    report, _ = cli.analyze_report(_parsed(cli, [*argv, "--", name]))
    return report


def _parsed(cli: Any, argv: list[str]) -> Any:
    """The CLI's parse of ``argv``; argparse's exit on a value it refuses becomes a ConfigError."""
    try:
        return cli.parse_command(argv)
    except SystemExit:
        raise ConfigError(f"fishtune {argv[0]}: arguments refused: {' '.join(argv[1:])}") from None


def _plain(value: Any) -> Any:
    """A spec mapping with NumPy scalars and tuples (``np.logspace`` grids) as YAML's plain types."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") and callable(value.item) else value


def _uri(store: StudyStore, tracking_uri: str | None) -> str:
    from study.environment import tracking_uri_override
    from study.spec_core import Tracking

    given = tracking_uri_override(tracking_uri, os.environ)
    return Tracking(uri=given).resolved(Path.cwd()).uri if given else store.tracking_uri()


def _trials(store: StudyStore, tracking_uri: str | None) -> pd.DataFrame:
    from study.status import study_table

    return study_table(_uri(store, tracking_uri), store.name)
