"""The ``fishtune`` command line: its subcommands, flags and help texts (what :mod:`study.cli` runs)."""

from __future__ import annotations

import argparse
from importlib import metadata

from study.logs import NORMAL, QUIET, VERBOSE


def command_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fishtune", description="Hyperparameter studies of the early-phase Fisher information."
    )
    parser.add_argument("--version", action="version", version=f"fishtune {_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors too")
    chatter = parser.add_mutually_exclusive_group()
    chatter.add_argument(
        "-q", "--quiet", dest="verbosity", action="store_const", const=QUIET, help="only warnings, errors and results"
    )
    chatter.add_argument(
        "-v", "--verbose", dest="verbosity", action="store_const", const=VERBOSE, help="also debug messages"
    )
    parser.set_defaults(verbosity=NORMAL)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="launch (or extend) a study from a spec file")
    run.add_argument("spec", help="study spec YAML, e.g. studies/digits-quick.yaml")
    run.add_argument("--num-samples", type=int, help="total trials (overrides search.num_samples)")
    run.add_argument("--new-study", metavar="NAME", help="run the spec as a new study under this name")
    run.add_argument("--results", metavar="URI", help="Tune storage_path (default <storage>/runs/<study>/ray)")

    resume = sub.add_parser("resume", help="continue an interrupted study")
    resume.add_argument("name")

    status = sub.add_parser("status", help="trials of a study and their outcomes")
    status.add_argument("name")
    status.add_argument(
        "--format", choices=["table", "json", "csv"], default="table", help="output format (default table)"
    )

    dashboard = sub.add_parser("dashboard", help="optuna-dashboard on the study's Optuna storage")
    dashboard.add_argument("name")
    dashboard.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: local only)")
    dashboard.add_argument("--port", type=int, default=8080)
    dashboard.add_argument(
        "--storage", default=".", help="folder holding runs/<study>/ (default: the working directory)"
    )

    analyze = sub.add_parser("analyze", help="early-Fisher vs test-accuracy report and plots")
    analyze.add_argument("name")
    analyze.add_argument("--out", help="output folder (default reports/<study>/)")
    analyze.add_argument("--epsilon", type=float, help="train-loss threshold ε (default: the study's fisher.epsilon)")
    analyze.add_argument(
        "--smooth-epochs",
        type=float,
        default=1.0,
        metavar="W",
        help="width in epochs of the box that smooths Tr(F) and the train loss before the reads (default 1.0)",
    )

    compare = sub.add_parser("compare", help="penalty studies side by side: the paper's Table 1")
    compare.add_argument("studies", nargs="+", metavar="STUDY")
    compare.add_argument("--name", required=True, help="what the comparison is called (its folder)")
    compare.add_argument("--out", help="output folder (default reports/<name>/)")

    ui = sub.add_parser("ui", help="MLflow UI on the study store")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: local only)")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--name", help="study whose store to open (default: --tracking-uri or ./mlflow.db)")

    for p in (run, resume, status, analyze, compare, ui):
        p.add_argument(
            "--tracking-uri",
            help="MLflow tracking URI; precedence: this flag > $MLFLOW_TRACKING_URI > the spec / stored study > ./mlflow.db",
        )
        p.add_argument("--storage", default=".", help="folder holding runs/<study>/ (default: the working directory)")
    for p in (run, resume):
        p.add_argument(
            "--address",
            help="join a Ray cluster: auto or host:port; precedence: this flag > $RAY_ADDRESS > start a local Ray",
        )
        p.add_argument(
            "--mlflow-wait",
            type=float,
            metavar="SECONDS",
            help="at the end, wait this long for an unreachable MLflow store before keeping its data on disk (default 120)",
        )
        p.add_argument(
            "--pending-timeout",
            type=float,
            metavar="SECONDS",
            help="with --address: wait this long for the autoscaler to add nodes a trial needs (default 600)",
        )
    return parser


def _version() -> str:
    try:
        return metadata.version("fishtune")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"
